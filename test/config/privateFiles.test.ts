/**
 * The permission rules for secret files on real files: missing directories are created 0700 and files 0600, looser
 * modes are tightened with one warning each, and directories that are not ours to tighten (a sticky shared tmp, the
 * working directory) are left as they are.
 */
import { chmodSync, closeSync, mkdirSync, mkdtempSync, openSync, rmSync, statSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { ensurePrivateDir, ensurePrivateFile, tightenPrivateFile } from "../../src/config/privateFiles.js"

const root = mkdtempSync(join(tmpdir(), "llm-proxy-private-"))
afterAll(() => rmSync(root, { recursive: true, force: true }))

const mode = (path: string) => statSync(path).mode & 0o7777

describe("private files", () => {
  it("creates missing directories 0700 (parents too) and a missing file 0600, silently", () => {
    const dir = join(root, "a", "b", "data")
    const file = join(dir, "db.sqlite")
    expect(ensurePrivateFile(file, dir)).toEqual([])
    expect(mode(join(root, "a"))).toBe(0o700)
    expect(mode(dir)).toBe(0o700)
    expect(mode(file)).toBe(0o600)
    expect(statSync(file).size).toBe(0)
    // Already private: nothing to say.
    expect(ensurePrivateFile(file, dir)).toEqual([])
  })

  it("tightens a group- or world-accessible directory and file, one warning naming each", () => {
    const dir = join(root, "loose")
    mkdirSync(dir)
    chmodSync(dir, 0o755)
    const file = join(dir, "audit.log")
    closeSync(openSync(file, "w"))
    chmodSync(file, 0o644)
    expect(ensurePrivateDir(dir)).toEqual([
      `tightened the permissions of ${dir} from 0755 to 0700 (it holds secret files)`
    ])
    expect(tightenPrivateFile(file)).toEqual([
      `tightened the permissions of ${file} from 0644 to 0600 (it may hold secrets)`
    ])
    expect([mode(dir), mode(file)]).toEqual([0o700, 0o600])
    chmodSync(file, 0o640)
    expect(ensurePrivateFile(file, dir)).toEqual([
      `tightened the permissions of ${file} from 0640 to 0600 (it may hold secrets)`
    ])
    expect(tightenPrivateFile(join(dir, "missing"))).toEqual([])
  })

  it("leaves a directory that holds other directories (like /var/lib) as it is, with a warning", () => {
    const parent = join(root, "lib")
    mkdirSync(join(parent, "someone-else"), { recursive: true })
    chmodSync(parent, 0o755)
    expect(ensurePrivateDir(parent)).toEqual([
      `${parent} (mode 0755) holds secret files but is not tightened because it also holds other directories; give the data files a directory of their own`
    ])
    expect(mode(parent)).toBe(0o755)
  })

  it("leaves a shared sticky directory (like /tmp) alone, and says why it leaves the working directory", () => {
    const shared = join(root, "shared")
    mkdirSync(shared)
    chmodSync(shared, 0o1777)
    expect(ensurePrivateDir(shared)).toEqual([])
    expect(mode(shared)).toBe(0o1777)
    const cwdMode = mode(process.cwd())
    if ((cwdMode & 0o077) !== 0 && (cwdMode & 0o1000) === 0) {
      const [warning] = ensurePrivateDir(".")
      expect(warning).toMatch(/is not tightened because it is also the root, working or home directory/)
      expect(mode(process.cwd())).toBe(cwdMode)
    }
  })
})
