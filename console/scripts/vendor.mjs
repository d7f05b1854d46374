// Copies the pinned npm libraries the console uses into src/vendor, which gpufn embeds in its
// binary (so running gpufn needs no npm). `npm run vendor` after changing a version in
// package.json; the browser test checks the vendored files still match node_modules.
import { copyFileSync } from "node:fs";

export const FILES = [
  ["node_modules/uplot/dist/uPlot.iife.min.js", "src/vendor/uPlot.iife.min.js"],
  ["node_modules/uplot/dist/uPlot.min.css", "src/vendor/uPlot.min.css"],
  ["node_modules/js-yaml/dist/js-yaml.min.js", "src/vendor/js-yaml.min.js"],
];

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const [from, to] of FILES) copyFileSync(from, to);
  console.log(`vendored ${FILES.length} files`);
}
