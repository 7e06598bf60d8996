// `npm run lint`: typescript-eslint's recommended rules, ESLint's, and @effect/eslint-plugin's dprint rule, which
// formats (run `npm run lint -- --fix` to apply it). The style is the one the code already had: 2 spaces, 120
// columns, no semicolons, double quotes, no trailing commas.
import * as effectEslint from "@effect/eslint-plugin"
import eslint from "@eslint/js"
import globals from "globals"
import tseslint from "typescript-eslint"

export default tseslint.config(
  { ignores: ["**/dist/**", "**/node_modules/**", "**/.bench-build/**", "coverage/**", "tools/**", "test/fixtures/**"] },
  eslint.configs.recommended,
  tseslint.configs.recommended,
  ...effectEslint.configs.dprint,
  { files: ["**/*.mjs", "**/*.js"], languageOptions: { globals: globals.node } },
  { files: ["web/src/**"], languageOptions: { globals: globals.browser } },
  // Tests read arbitrary JSON answers; `any` there is the honest type.
  { files: ["test/**"], rules: { "@typescript-eslint/no-explicit-any": "off" } },
  {
    rules: {
      // Validators and terminal output match control characters on purpose.
      "no-control-regex": "off",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_", caughtErrors: "none" }],
      "@effect/dprint": ["error", {
        config: {
          indentWidth: 2,
          lineWidth: 120,
          semiColons: "asi",
          quoteStyle: "alwaysDouble",
          trailingCommas: "never",
          operatorPosition: "maintain",
          "arrowFunction.useParentheses": "force"
        }
      }]
    }
  }
)
