export const obfuscateApiKey = (key: string): string => {
  if (key.length <= 4) return "*".repeat(key.length)
  if (key.length <= 12) return key.slice(0, 2) + "*".repeat(key.length - 2)
  return `${key.slice(0, 8)}...${key.slice(-4)}`
}

// A client that echoes back a value it received from a listing would otherwise
// overwrite the real key with its masked form.
export const isObfuscatedApiKey = (key: string): boolean => key.includes("...") || key.includes("****")
