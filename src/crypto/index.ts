export * from "./constantTime.js"
export * from "./KeyCipher.js"
export * from "./obfuscate.js"
export * from "./ProxyToken.js"
