// Parses an AsyncAPI document with @asyncapi/parser and prints its diagnostics as JSON lines.
// Exit status: 0 when the parser produced a document and reported no error, 1 otherwise.
// Usage: node check.js PATH
'use strict';

const fs = require('fs');
const path = require('path');
const { Parser, DiagnosticSeverity } = require('@asyncapi/parser');

async function main() {
  const file = path.resolve(process.argv[2] || path.join(__dirname, '..', 'asyncapi.yaml'));
  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(fs.readFileSync(file, 'utf8'), {
    source: file,
  });
  const names = { 0: 'error', 1: 'warning', 2: 'information', 3: 'hint' };
  for (const d of diagnostics) {
    const where = (d.path || []).join('/');
    console.log(JSON.stringify({ severity: names[d.severity], code: d.code, path: where, message: d.message }));
  }
  const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
  if (!document || errors.length > 0) {
    console.log(JSON.stringify({ result: 'invalid', errors: errors.length }));
    process.exit(1);
  }
  console.log(JSON.stringify({
    result: 'valid',
    version: document.version(),
    channels: document.channels().all().map((c) => c.address()),
    messages: document.allMessages().all().map((m) => m.id()),
  }));
}

main().catch((err) => {
  console.log(JSON.stringify({ result: 'crashed', message: String(err && err.stack || err) }));
  process.exit(1);
});
