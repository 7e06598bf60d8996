/**
 * What each caller may act on. The management token may act on everything; a project key (src/token/ProjectKeys.ts)
 * only on its own project — its tokens, the project itself and its usage — and every other project id it names is
 * 403 `forbidden`. Which endpoints admit a project key at all is the API definition's (`ProjectKeyAccess`, checked
 * by the auth middleware); these helpers are the handlers' half.
 */
import { Effect } from "effect"
import { type Caller, CurrentCaller } from "../api/ManagementApi.js"
import { forbidden } from "./auth.js"

export const caller = CurrentCaller

export const isProjectKey = (c: Caller): c is Extract<Caller, { _tag: "project_key" }> => c._tag === "project_key"

/** A project key acting on another project's resource: 403. */
export const ownProjectOnly = (c: Caller, projectId: string) =>
  isProjectKey(c) && c.projectId !== projectId ? Effect.fail(forbidden()) : Effect.void

/**
 * The project a listing or usage query is about: a project key's own (naming another is 403), or what the
 * management token asked for (undefined: all).
 */
export const projectScope = (c: Caller, requested: string | undefined) =>
  isProjectKey(c)
    ? requested !== undefined && requested !== c.projectId
      ? Effect.fail(forbidden())
      : Effect.succeed<string | undefined>(c.projectId)
    : Effect.succeed(requested)
