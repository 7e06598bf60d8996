/**
 * Security checks:
 *
 *   secrets    a whole run of the built binary (LOG_LEVEL=debug, audit file on, encryption on) with traffic that
 *              touches every path that could leak: every response, every byte it printed, every file it wrote
 *              (audit log, database) and every request the upstream received are grepped for the management token,
 *              the provider keys and the proxy tokens (plain, base64 and URL-encoded)
 *   timing     the management-token comparison: time distributions for a guess sharing no prefix and one sharing
 *              all but the last character are compared (Mann-Whitney U over interleaved batches); a deliberately
 *              leaky comparator measured the same way must be flagged, the real one must not
 *   upstream   neither `Host`, an absolute-form target, `X-Forwarded-Host`, `Forwarded` nor `X-Original-URL` moves
 *              the request to another server
 *   /v1 auth   no path encoding reaches the provider without a valid token
 */
import { Redacted } from "effect"
import { randomBytes } from "node:crypto"
import { readdirSync, readFileSync, statSync } from "node:fs"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { builtInOpenAi } from "../../src/config/Providers.js"
import { checkAuthorization } from "../../src/http/auth.js"
import { isSafePath, routeOf } from "../../src/proxy/policy.js"
import { type BackendInstance, backends } from "../http/harness.js"
import {
  call,
  chatBody,
  createToken,
  type ProjectAndToken,
  projectAndToken,
  type Stack,
  startStack
} from "../proxy/stack.js"
import { chatChunks, type MockUpstream, reset, sse, startMockUpstream } from "../support/mockUpstream.js"
import { built, printTally, rawHttp, sleep, startServe, tally } from "./support.js"

const TITLE = "security checks"

afterAll(() => printTally(TITLE))

// ---------------------------------------------------------------------------------------------------------------
// Secrets

const filesUnder = (dir: string): Array<string> =>
  readdirSync(dir).flatMap((name) => {
    const p = join(dir, name)
    return statSync(p).isDirectory() ? filesUnder(p) : [p]
  })

const variants = (secret: string) =>
  [
    secret,
    Buffer.from(secret).toString("base64"),
    Buffer.from(secret).toString("base64url"),
    encodeURIComponent(secret),
    // A long enough slice would still identify it (obfuscated hints are 8 + 4 characters).
    secret.slice(0, 20)
  ].filter((v, i, all) => v.length >= 12 && all.indexOf(v) === i)

describe.skipIf(!built)("secrets never leave where they belong", () => {
  it("a whole run: no response, log line, file or upstream request carries a secret it should not", async () => {
    const mock = await startMockUpstream()
    const managementToken = `mt-${randomBytes(24).toString("base64url")}`
    const serve = await startServe({
      MANAGEMENT_TOKEN: managementToken,
      OPENAI_API_URL: mock.url,
      LOG_LEVEL: "debug",
      ENCRYPTION_KEY: randomBytes(32).toString("base64"),
      AUDIT_ENABLED: "true",
      AUDIT_LOG_FILE: "./data/audit.log",
      ACCESS_LOG: "true",
      USAGE_FLUSH_INTERVAL: "100ms"
    })
    const responses: Array<string> = []
    const tokenCreations: Array<string> = []
    const send = async (
      method: string,
      path: string,
      options: { auth?: string | null; body?: unknown; headers?: Record<string, string> } = {}
    ) => {
      tally(TITLE, "secrets run: requests")
      const headers: Record<string, string> = { ...options.headers }
      if (options.auth !== null) headers["authorization"] = options.auth ?? `Bearer ${managementToken}`
      const body = options.body === undefined
        ? undefined
        : typeof options.body === "string"
        ? options.body
        : JSON.stringify(options.body)
      if (body !== undefined) headers["content-type"] ??= "application/json"
      const r = await fetch(serve.url + path, { method, headers, ...(body !== undefined ? { body } : {}) })
      const text = await r.text()
      const record = `${r.status} ${JSON.stringify([...r.headers.entries()])}\n${text}`
      if (method === "POST" && path === "/manage/tokens" && r.status === 201) tokenCreations.push(record)
      else responses.push(record)
      return {
        status: r.status,
        text,
        json: (() => {
          try {
            return JSON.parse(text)
          } catch {
            return undefined
          }
        })()
      }
    }
    try {
      const keys = [`sk-proj-${randomBytes(24).toString("hex")}`, `sk-ant-${randomBytes(24).toString("hex")}`]
      const projects: Array<string> = []
      for (const [i, key] of keys.entries()) {
        const p = await send("POST", "/manage/projects", { body: { name: `secrets-${i}`, api_key: key } })
        expect(p.status).toBe(201)
        projects.push(p.json.id)
      }
      // Rotation: the old key and the new one are both secrets.
      const rotated = `sk-proj-${randomBytes(24).toString("hex")}`
      keys.push(rotated)
      expect((await send("PATCH", `/manage/projects/${projects[0]}`, { body: { api_key: rotated } })).status).toBe(200)
      // Errors that quote input: a duplicate name, an obfuscated key, a bad field carrying a key.
      await send("POST", "/manage/projects", { body: { name: "secrets-0", api_key: keys[1] } })
      await send("POST", "/manage/projects", { body: { name: "x", api_key: keys[1], extra: keys[1] } })
      await send("PATCH", `/manage/projects/${projects[1]}`, { body: { api_key: 42 } })
      const tokens: Array<string> = []
      for (const id of projects) {
        const t = await send("POST", "/manage/tokens", { body: { project_id: id, duration_minutes: 10 } })
        tokens.push(t.json.token)
      }
      const limited = await send("POST", "/manage/tokens", {
        body: { project_id: projects[0], duration_minutes: 10, max_requests: 1 }
      })
      tokens.push(limited.json.token)
      // Reads of everything.
      await send("GET", "/manage/projects")
      for (const id of projects) await send("GET", `/manage/projects/${id}`)
      await send("GET", "/manage/tokens")
      // Failed logins: near-misses of the management token (audited), the token in odd places.
      await send("GET", "/manage/projects", { auth: `Bearer ${managementToken}x` })
      await send("GET", "/manage/projects", { auth: `Bearer ${managementToken.slice(0, -1)}` })
      await send("GET", "/manage/projects", {
        auth: `Basic ${Buffer.from(`admin:${managementToken}`).toString("base64")}`
      })
      await send("GET", `/manage/projects?token=${managementToken}`, { auth: null })
      // The proxy: success, streaming, every refusal, upstream failures, the management token as a proxy token.
      mock.enqueue(sse(chatChunks(["a", "b"])))
      await send("POST", "/v1/chat/completions", { auth: `Bearer ${tokens[0]}`, body: chatBody({ stream: true }) })
      await send("POST", "/v1/chat/completions", { auth: `Bearer ${tokens[0]}`, body: chatBody() })
      await send("POST", "/v1/chat/completions", { auth: `Bearer ${tokens[2]}`, body: chatBody() })
      await send("POST", "/v1/chat/completions", { auth: `Bearer ${tokens[2]}`, body: chatBody() }) // quota exhausted
      await send("POST", "/v1/chat/completions", { auth: `Bearer ${managementToken}`, body: chatBody() })
      await send("POST", "/v1/chat/completions", { auth: `Bearer ${tokens[0]!.slice(0, -1)}A`, body: chatBody() })
      await send("POST", "/v1/chat/completions", {
        auth: `Bearer ${tokens[0]}`,
        body: "{not json",
        headers: { "content-type": "application/json" }
      })
      await send("GET", `/v1/models?api_key=${keys[0]}`, { auth: `Bearer ${tokens[1]}` })
      mock.enqueue(reset())
      await send("POST", "/v1/chat/completions", { auth: `Bearer ${tokens[0]}`, body: chatBody() })
      mock.enqueue(reset(chatChunks(["x"]).slice(0, 1)))
      await send("POST", "/v1/chat/completions", { auth: `Bearer ${tokens[0]}`, body: chatBody({ stream: true }) })
        .catch(() => undefined)
      // Deactivation, revocation, and requests after them.
      await send("DELETE", `/manage/tokens/${(await send("GET", "/manage/tokens")).json[0].id}`)
      await send("PATCH", `/manage/projects/${projects[1]}`, { body: { is_active: false, revoke_tokens: true } })
      await send("POST", "/v1/chat/completions", { auth: `Bearer ${tokens[1]}`, body: chatBody() })
      await send("GET", "/manage/audit?page_size=100")
      await send("GET", "/health")
      await send("GET", "/manage/openapi.json")
      await sleep(500)
    } finally {
      const code = await serve.stop()
      expect(code).toBe(0)
      await mock.close()
    }
    const output = serve.output()
    const files = filesUnder(serve.cwd).map((f) => ({ f, bytes: readFileSync(f) }))
    const filesText = files.map(({ f, bytes }) => `${f}\n${bytes.toString("latin1")}`)
    // The run did produce what is grepped (a grep of nothing proves nothing).
    expect(output.length).toBeGreaterThan(500)
    expect(files.some(({ f }) => f.endsWith("audit.log"))).toBe(true)
    expect(files.find(({ f }) => f.endsWith("audit.log"))!.bytes.length).toBeGreaterThan(500)
    console.log(
      `[chaos] secrets run: ${responses.length + tokenCreations.length} responses, ${
        output.split("\n").length
      } output lines, ${files.length} files (${
        files.map(({ bytes }) => bytes.length).reduce((a, b) => a + b, 0)
      } bytes), ${mock.requests.length} upstream requests grepped`
    )

    const secretsEverywhere = [managementToken]
    const keysSeen = mock.requests.map((r) => r.headers.authorization ?? "").join("\n")
    const haystacks: Record<string, ReadonlyArray<string>> = {
      responses,
      "serve output": [output],
      files: filesText
    }
    const providerKeys = [...new Set(keysSeen.match(/sk-(proj|ant)-[0-9a-f]{48}/g) ?? [])]
    expect(providerKeys.length).toBeGreaterThan(0)
    const allKeys = [...providerKeys]
    const proxyTokens = tokenCreations.map((t) => /"token":"(sk-[A-Za-z0-9_-]{43})"/.exec(t)?.[1]).filter((
      t
    ): t is string => !!t)
    expect(proxyTokens.length).toBe(3)
    const findings: Array<string> = []
    for (const [where, texts] of Object.entries(haystacks)) {
      for (const secret of [...secretsEverywhere, ...allKeys, ...proxyTokens]) {
        for (const v of variants(secret)) {
          if (texts.some((t) => t.includes(v))) {
            findings.push(`${where} contains ${secret.slice(0, 6)}… (as ${v === secret ? "itself" : "a variant"})`)
          }
        }
      }
    }
    // The upstream gets the provider key and nothing else secret.
    const upstreamText = mock.requests.map((r) => JSON.stringify(r.rawHeaders) + r.url + r.body).join("\n")
    for (const secret of [...secretsEverywhere, ...proxyTokens]) {
      for (const v of variants(secret)) {
        if (upstreamText.includes(v)) findings.push(`upstream request contains ${secret.slice(0, 6)}…`)
      }
    }
    // Token creations show the new token exactly once, and no other secret.
    for (const t of tokenCreations) {
      for (const secret of [...secretsEverywhere, ...allKeys]) {
        if (t.includes(secret)) findings.push("token creation response contains another secret")
      }
    }
    expect(findings).toEqual([])
  })
})

// ---------------------------------------------------------------------------------------------------------------
// Timing of the management-token comparison

/** Mann-Whitney U test, normal approximation with tie correction: the z score of "a and b differ". */
const mannWhitneyZ = (a: ReadonlyArray<number>, b: ReadonlyArray<number>): number => {
  const all = [...a.map((v) => ({ v, g: 0 })), ...b.map((v) => ({ v, g: 1 }))].sort((x, y) => x.v - y.v)
  const ranks = new Array<number>(all.length)
  let tieTerm = 0
  for (let i = 0; i < all.length;) {
    let j = i
    while (j + 1 < all.length && all[j + 1]!.v === all[i]!.v) j++
    const rank = (i + j) / 2 + 1
    for (let k = i; k <= j; k++) ranks[k] = rank
    const t = j - i + 1
    tieTerm += t ** 3 - t
    i = j + 1
  }
  let ra = 0
  all.forEach((x, i) => (x.g === 0 ? (ra += ranks[i]!) : undefined))
  const n1 = a.length
  const n2 = b.length
  const u = ra - (n1 * (n1 + 1)) / 2
  const mean = (n1 * n2) / 2
  const n = n1 + n2
  const sd = Math.sqrt(((n1 * n2) / 12) * (n + 1 - tieTerm / (n * (n - 1))))
  return (u - mean) / sd
}

const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]!
}

/**
 * Times `compare` on two guesses in interleaved batches (random order per round, so load on the machine hits both
 * alike). Returns the z score and the relative difference of the medians.
 */
const timeGuesses = (compare: (guess: string) => unknown, far: string, near: string, rounds = 400, perBatch = 200) => {
  const a: Array<number> = []
  const b: Array<number> = []
  const batch = (guess: string) => {
    const t0 = process.hrtime.bigint()
    for (let i = 0; i < perBatch; i++) compare(guess)
    return Number(process.hrtime.bigint() - t0)
  }
  // warm-up: JIT both paths
  for (let i = 0; i < 50; i++) {
    batch(far)
    batch(near)
  }
  for (let r = 0; r < rounds; r++) {
    if (Math.random() < 0.5) {
      a.push(batch(far))
      b.push(batch(near))
    } else {
      b.push(batch(near))
      a.push(batch(far))
    }
  }
  return { z: mannWhitneyZ(a, b), diff: (median(b) - median(a)) / median(a) }
}

/** "Leaks" when the two distributions differ beyond chance (|z| > 5) and by more than 2% of the median. */
const leaks = (m: { z: number; diff: number }) => Math.abs(m.z) > 5 && Math.abs(m.diff) > 0.02

describe("management-token comparison timing", () => {
  const secret = `mt-${randomBytes(32).toString("base64url")}`
  const expected = Redacted.make(secret)
  const far = `Bearer ${secret.startsWith("x") ? "y" : "x"}${secret.slice(1).replace(/./g, "-")}`
  const near = `Bearer ${secret.slice(0, -1)}${secret.endsWith("x") ? "y" : "x"}`

  it("a leaky comparator measured this way is flagged (the test has the power to see a prefix leak)", () => {
    const naive = (header: string) => {
      const guess = header.slice(7)
      if (guess.length !== secret.length) return false
      for (let i = 0; i < guess.length; i++) if (guess.charCodeAt(i) !== secret.charCodeAt(i)) return false
      return true
    }
    // Retried like the real check below, so a noisy machine cannot make it look weaker than it is.
    const attempts = [timeGuesses(naive, far, near, 300, 2000)]
    if (!leaks(attempts[0]!)) attempts.push(timeGuesses(naive, far, near, 300, 2000))
    console.log(
      `[chaos] timing, leaky comparator: ${
        attempts.map((m) => `z=${m.z.toFixed(1)} Δmedian=${(m.diff * 100).toFixed(1)}%`).join("; ")
      }`
    )
    tally(TITLE, "timing: batches (leaky control)", attempts.length * 600)
    expect(attempts.some(leaks)).toBe(true)
  })

  it("checkAuthorization: a guess sharing all but the last character takes as long as one sharing nothing", () => {
    // Up to three attempts; a real leak shows in every one, a noisy neighbour on a 2-core machine does not.
    const attempts: Array<{ z: number; diff: number }> = []
    for (let i = 0; i < 3; i++) {
      const m = timeGuesses((h) => checkAuthorization(h, expected), far, near)
      attempts.push(m)
      if (!leaks(m)) break
    }
    console.log(
      `[chaos] timing, checkAuthorization: ${
        attempts.map((m) => `z=${m.z.toFixed(1)} Δmedian=${(m.diff * 100).toFixed(2)}%`).join("; ")
      }`
    )
    tally(TITLE, "timing: batches (checkAuthorization)", attempts.length * 800)
    expect(attempts.every(leaks)).toBe(false)
    // And both are refused, of course.
    expect(checkAuthorization(near, expected)?.error).toBe("invalid management token")
    expect(checkAuthorization(`Bearer ${secret}`, expected)).toBeUndefined()
  })
})

// ---------------------------------------------------------------------------------------------------------------
// The upstream URL and /v1 authentication

describe("requests cannot choose their upstream or skip authentication", () => {
  let backend: BackendInstance
  let stack: Stack
  let evil: MockUpstream
  let t: ProjectAndToken
  let port: number
  let revoked: string
  beforeAll(async () => {
    backend = await backends[0]!.create()
    stack = await startStack(backend)
    evil = await startMockUpstream()
    port = Number(new URL(stack.server.url).port)
    t = await projectAndToken(stack.manage)
    const r = await createToken(stack.manage, t.projectId)
    await stack.manage.delete(`/manage/tokens/${r.tokenId}`)
    revoked = r.token
  })
  afterAll(async () => {
    await stack?.close()
    await evil?.close()
    await backend?.cleanup()
  })

  it("Host, absolute-form targets, X-Forwarded-Host, Forwarded and X-Original-URL never move the request", async () => {
    const evilHost = new URL(evil.url).host
    const good = new URL(stack.mock.url).host
    const body = JSON.stringify(chatBody())
    const auth = ["Authorization", `Bearer ${t.token}`] as const
    const json = [["Content-Type", "application/json"], ["Content-Length", String(body.length)]] as const
    const cases: ReadonlyArray<{ target: string; headers: ReadonlyArray<readonly [string, string]> }> = [
      { target: "/v1/chat/completions", headers: [["X-Forwarded-Host", evilHost]] },
      { target: "/v1/chat/completions", headers: [["Forwarded", `host=${evilHost};proto=http`]] },
      {
        target: "/v1/chat/completions",
        headers: [["X-Original-URL", `${evil.url}/v1/chat/completions`], ["X-Rewrite-URL", `${evil.url}/x`]]
      },
      {
        target: "/v1/chat/completions",
        headers: [["X-Forwarded-Proto", "https"], ["X-Forwarded-Port", new URL(evil.url).port]]
      },
      { target: `${evil.url}/v1/chat/completions`, headers: [] },
      { target: `http://${evilHost}/v1/chat/completions`, headers: [["X-Forwarded-Host", evilHost]] },
      { target: `//${evilHost}/v1/chat/completions`, headers: [] },
      { target: `/v1/chat/completions?url=${encodeURIComponent(evil.url)}`, headers: [] },
      { target: `/v1/chat/completions@${evilHost}`, headers: [] },
      { target: `/v1/chat/completions#@${evilHost}`, headers: [] }
    ]
    for (const c of cases) {
      tally(TITLE, "upstream: hostile targets and headers")
      // rawHttp writes `Host: 127.0.0.1`; a Host naming the evil server goes first, which is the one Node keeps.
      const r = await rawHttp(port, "POST", c.target, [["Host", evilHost], auth, ...json, ...c.headers], body)
      expect(r.status).toBeLessThan(500)
    }
    expect(evil.requests).toHaveLength(0)
    for (const u of stack.mock.requests) {
      expect(u.headers.host).toBe(good)
      expect(u.headers["x-forwarded-host"]).toBeUndefined()
      expect(u.headers["forwarded"]).toBeUndefined()
    }
    expect(stack.mock.requests.length).toBeGreaterThan(0)
  })

  it("no path encoding reaches the provider without a valid token", async () => {
    stack.mock.reset()
    const paths = [
      "/v1/chat/completions",
      "/v1/chat/completions/",
      "/%76%31/chat/completions",
      "/v1%2fchat%2fcompletions",
      "/v1%2Fchat/completions",
      "//v1/chat/completions",
      "/./v1/chat/completions",
      "/v1/./chat/completions",
      "/v1/x/../chat/completions",
      "/v1/%2e%2e/v1/chat/completions",
      "/V1/chat/completions",
      "/v1/chat/completions;a=b",
      "/v1/chat/completions%00",
      "/v1/chat/completions%20",
      "/v1\\chat\\completions",
      "/v1/models",
      "/v1/models/../../manage/projects",
      "/v1?",
      "/v1"
    ]
    const credentials: ReadonlyArray<ReadonlyArray<readonly [string, string]>> = [
      [],
      [["Authorization", "Bearer"]],
      [["Authorization", `Bearer ${revoked}`]],
      [["Authorization", `Bearer sk-${"B".repeat(43)}`]],
      [["Authorization", `Basic ${Buffer.from(`x:${t.token}`).toString("base64")}`]],
      [["Authorization", `Bearer ${t.token}`], ["Authorization", "Bearer other"]],
      [["X-Api-Key", t.token]],
      [["Cookie", `token=${t.token}`]],
      [["Authorization", `Bearer ${stack.server.token}`]]
    ]
    for (const p of paths) {
      for (const cred of credentials) {
        for (const method of ["GET", "POST"]) {
          tally(TITLE, "/v1 without a valid token")
          const r = await rawHttp(port, method, p, cred)
          if (!(r.status === 0 || (r.status >= 400 && r.status < 500))) {
            throw new Error(
              `${method} ${p} with ${JSON.stringify(cred).slice(0, 80)}: ${r.status} ${r.body.slice(0, 200)}`
            )
          }
        }
      }
    }
    expect(stack.mock.requests).toHaveLength(0)
    // The same paths with the valid token: only the canonical allowed ones reach it, unchanged.
    for (const p of paths) {
      const seen = stack.mock.requests.length
      await rawHttp(port, "POST", p, [["Authorization", `Bearer ${t.token}`]])
      for (const u of stack.mock.requests.slice(seen)) expect(u.url).toBe(p)
    }
    const openai = builtInOpenAi("http://upstream.invalid").get("openai")!
    for (const u of stack.mock.requests) {
      expect(isSafePath(u.path)).toBe(true)
      expect(routeOf(u.method, u.path, openai)).toBeUndefined()
    }
    await call(stack.server.url, "/v1/chat/completions", { token: t.token, body: chatBody() })
  })
})
