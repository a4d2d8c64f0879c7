// Parses PromQL expressions with Prometheus's own grammar (@prometheus-io/lezer-promql).
// Reads a JSON array of expressions on stdin; prints a JSON array with, for each one, whether it
// parsed, where it did not, the metric names its selectors read and how many selectors name none.
// Usage: echo '["rate(x[5m])"]' | node check.js
'use strict';

const { parser } = require('@prometheus-io/lezer-promql');

function analyse(expr) {
  const tree = parser.parse(expr);
  const errors = [];
  const metrics = new Set();
  let unnamed = 0;
  tree.iterate({
    enter(node) {
      if (node.type.isError) {
        errors.push({ at: node.from, near: expr.slice(Math.max(0, node.from - 20), node.to + 20) });
      }
      if (node.name === 'VectorSelector' && !node.node.getChild('Identifier')) {
        unnamed += 1;
      }
      if (node.name === 'Identifier' && node.node.parent && node.node.parent.name === 'VectorSelector') {
        metrics.add(expr.slice(node.from, node.to));
      }
    },
  });
  // A selector without a metric name ({__name__=~"..."}) could read anything: reported apart.
  return { expr, ok: errors.length === 0, errors, metrics: [...metrics].sort(), unnamed };
}

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const expressions = JSON.parse(input);
  console.log(JSON.stringify(expressions.map(analyse)));
});
