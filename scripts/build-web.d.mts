export declare const buildWeb: (outdir?: string) => Promise<{
  readonly js: { readonly file: string; readonly bytes: number }
  readonly css: { readonly file: string; readonly bytes: number }
}>
