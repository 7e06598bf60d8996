/**
 * Parsers of plain words shared by the configuration (src/config/AppConfig.ts) and request validation: one answer to
 * "what counts as true" everywhere.
 */

/**
 * A yes/no value, case-insensitive: `true`, `1`, `yes` or `false`, `0`, `no`, and the empty string (false); undefined
 * for anything else. Surrounding spaces are not ignored: a caller that allows them trims first.
 */
export const parseBoolean = (s: string): boolean | undefined => {
  switch (s.toLowerCase()) {
    case "true":
    case "1":
    case "yes":
      return true
    case "false":
    case "0":
    case "no":
    case "":
      return false
  }
  return undefined
}
