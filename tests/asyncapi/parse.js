// Parses an AsyncAPI document with the official parser (@asyncapi/parser, installed by
// scripts/services.sh) and prints one JSON line per diagnostic, then the channel count.
// node parse.js FILE  (with NODE_PATH pointing at the parser's node_modules)
const { Parser } = require('@asyncapi/parser');
const fs = require('fs');
(async () => {
  const { document, diagnostics } = await new Parser().parse(fs.readFileSync(process.argv[2], 'utf8'));
  for (const d of diagnostics) {
    console.log(JSON.stringify({ severity: d.severity, code: d.code, message: d.message, path: d.path }));
  }
  console.log(JSON.stringify({ channels: document ? document.channels().length : null }));
})();
