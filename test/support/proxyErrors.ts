/**
 * Reading an error the proxy produced itself on `/v1`, whatever its wire shape: today's
 * `{"error": "...", "code": "...", "description"?: "..."}`, OpenAI's
 * `{"error": {"message": "...", "type": "...", "code": "...", "param": null, "description"?: "..."}}` or, on
 * Anthropic's paths, `{"type": "error", "error": {"type": "...", "message": "...", "code": "..."}}`. Tests that
 * assert a `/v1` refusal read it through this, so they hold for every shape.
 */
export interface ProxyError {
  readonly message: string
  readonly code: string | undefined
  readonly type: string | undefined
  readonly description: string | undefined
}

export const proxyError = (body: unknown): ProxyError => {
  const b = (typeof body === "string" ? JSON.parse(body) : body) as Record<string, unknown> | null
  const e = b?.["error"]
  if (e !== null && typeof e === "object") {
    const o = e as Record<string, unknown>
    return {
      message: String(o["message"] ?? ""),
      code: typeof o["code"] === "string" ? o["code"] : undefined,
      type: typeof o["type"] === "string" ? o["type"] : undefined,
      description: typeof o["description"] === "string"
        ? o["description"]
        : typeof b?.["description"] === "string"
        ? (b["description"] as string)
        : undefined
    }
  }
  return {
    message: typeof e === "string" ? e : "",
    code: typeof b?.["code"] === "string" ? (b["code"] as string) : undefined,
    type: undefined,
    description: typeof b?.["description"] === "string" ? (b["description"] as string) : undefined
  }
}
