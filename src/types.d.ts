/** SQL migration files are imported as text so the compiled binary carries them. */
declare module "*.sql" {
  const text: string;
  export default text;
}

/** swagger-ui-dist's files, imported `with { type: "file" }`: a path Bun.file reads (embedded in the binary). */
declare module "swagger-ui-dist/swagger-ui-bundle.js" {
  const path: string;
  export default path;
}
declare module "swagger-ui-dist/swagger-ui.css" {
  const path: string;
  export default path;
}
