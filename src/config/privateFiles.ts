/**
 * Secrets at rest: the data directory (`./data` by default) is created 0700 and the files that may hold secrets —
 * the SQLite database and its -wal/-shm (provider keys in plain text without ENCRYPTION_KEY), the management token,
 * the audit log, the dispatcher's event and dead-letter files (full prompts and answers) — 0600. A file or directory
 * found with a looser mode is tightened, and each one tightened is named in a warning the caller logs.
 *
 * A directory is left alone when tightening it would break something else: a shared sticky directory such as /tmp
 * (the files in it are private anyway), the filesystem root, the working directory or the home directory, one owned
 * by another user, or one that holds other directories — a data directory holds files, while /var/lib or /var/log
 * (where DATABASE_PATH=/var/lib/x.db would point, and which a process running as root could change) hold directories.
 * Each of those but the sticky one gets a warning that says so.
 */
import { chmodSync, closeSync, mkdirSync, openSync, readdirSync, statSync } from "node:fs"
import { homedir } from "node:os"
import { resolve } from "node:path"

export const PRIVATE_DIR_MODE = 0o700
export const PRIVATE_FILE_MODE = 0o600

const octal = (mode: number) => `0${(mode & 0o777).toString(8)}`

const holdsDirectories = (dir: string) => {
  try {
    return readdirSync(dir, { withFileTypes: true }).some((e) => e.isDirectory())
  } catch {
    return true
  }
}

const statOrUndefined = (path: string) => {
  try {
    return statSync(path)
  } catch {
    return undefined
  }
}

// Even as root: a directory of another user (a home directory, say) is theirs to decide.
const ownedByUs = (uid: number) => typeof process.getuid !== "function" || process.getuid() === uid

/**
 * Creates `dir` and its missing parents with mode 0700; tightens an existing `dir` that group or others can enter.
 * Returns the warnings to log (one per directory tightened or left loose).
 */
export const ensurePrivateDir = (dir: string): Array<string> => {
  const existing = statOrUndefined(dir)
  if (existing === undefined) {
    mkdirSync(dir, { recursive: true, mode: PRIVATE_DIR_MODE })
    return []
  }
  if (!existing.isDirectory() || (existing.mode & 0o077) === 0) return []
  // A shared temporary directory: every file we put there is 0600 already.
  if ((existing.mode & 0o1000) !== 0) return []
  const absolute = resolve(dir)
  if (absolute === resolve("/") || absolute === process.cwd() || absolute === resolve(homedir())) {
    return [
      `${dir} (mode ${octal(existing.mode)}) holds secret files but is not tightened because it is also the root, ` +
      "working or home directory; give the data files a directory of their own"
    ]
  }
  if (!ownedByUs(existing.uid)) {
    return [`${dir} (mode ${octal(existing.mode)}) holds secret files but belongs to another user; make it 0700`]
  }
  if (holdsDirectories(dir)) {
    return [
      `${dir} (mode ${octal(existing.mode)}) holds secret files but is not tightened because it also holds other ` +
      "directories; give the data files a directory of their own"
    ]
  }
  try {
    chmodSync(dir, PRIVATE_DIR_MODE)
  } catch (e) {
    return [
      `${dir} (mode ${octal(existing.mode)}) holds secret files and could not be made 0700: ${(e as Error).message}`
    ]
  }
  return [`tightened the permissions of ${dir} from ${octal(existing.mode)} to 0700 (it holds secret files)`]
}

/** Makes an existing `path` 0600 when group or others may read it; returns the warning to log, if any. */
export const tightenPrivateFile = (path: string): Array<string> => {
  const existing = statOrUndefined(path)
  if (existing === undefined || !existing.isFile() || (existing.mode & 0o077) === 0) return []
  try {
    chmodSync(path, PRIVATE_FILE_MODE)
  } catch (e) {
    return [`${path} (mode ${octal(existing.mode)}) holds secrets and could not be made 0600: ${(e as Error).message}`]
  }
  return [`tightened the permissions of ${path} from ${octal(existing.mode)} to 0600 (it may hold secrets)`]
}

/**
 * Prepares a secret file before something else opens it: its directory private, the file itself created empty with
 * mode 0600 when missing (SQLite then creates its -wal/-shm with the same mode), or tightened when it exists.
 */
export const ensurePrivateFile = (path: string, directory: string): Array<string> => {
  const warnings = ensurePrivateDir(directory)
  if (statOrUndefined(path) === undefined) {
    closeSync(openSync(path, "a", PRIVATE_FILE_MODE))
    return warnings
  }
  return [...warnings, ...tightenPrivateFile(path)]
}
