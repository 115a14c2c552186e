'use strict'
// Where a `node --cpu-prof` profile's time went (the fleet's apps under SYNCAR_FLEET_CPU_PROF, bench/fleet.py):
// self time by function, and the total time of the functions whose name or file (its whole path) matches a pattern.
//   node cpuprofile.js <file.cpuprofile> [--top N] [--match regexp]
const fs = require('node:fs')

const args = process.argv.slice(2)
const option = (name, fallback) => {
  const at = args.indexOf(name)
  return at === -1 ? fallback : args[at + 1]
}
const top = Number(option('--top', 40))
const match = option('--match', null)
const profile = JSON.parse(fs.readFileSync(args[0], 'utf8'))

const nodes = new Map(profile.nodes.map((node) => [node.id, node]))
const self = new Map() // node id -> µs sampled in it
for (let i = 0; i < profile.samples.length; i++) {
  self.set(profile.samples[i], (self.get(profile.samples[i]) || 0) + (profile.timeDeltas[i] || 0))
}
const total = [...self.values()].reduce((a, b) => a + b, 0)
const where = (node) => {
  const { functionName, url, lineNumber } = node.callFrame
  return `${functionName || '(anonymous)'} ${url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\//, '')}:${lineNumber + 1}`
}

const bySelf = new Map()
for (const [id, us] of self) bySelf.set(where(nodes.get(id)), (bySelf.get(where(nodes.get(id))) || 0) + us)
const pct = (us) => `${(100 * us / total).toFixed(1).padStart(5)}%`
console.log(`${(total / 1e6).toFixed(2)} s sampled; self time:`)
for (const [name, us] of [...bySelf].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${pct(us)}  ${name}`)

if (match) {
  // Total time: a sample counts once for a function matching the pattern anywhere on its stack.
  const pattern = new RegExp(match)
  const parent = new Map()
  for (const node of profile.nodes) for (const child of node.children || []) parent.set(child, node.id)
  const inclusive = new Map()
  for (const [id, us] of self) {
    const seen = new Set()
    for (let at = id; at !== undefined; at = parent.get(at)) {
      const name = where(nodes.get(at))
      if (pattern.test(`${nodes.get(at).callFrame.url} ${name}`) && !seen.has(name)) { seen.add(name); inclusive.set(name, (inclusive.get(name) || 0) + us) }
    }
  }
  console.log(`\ntotal time of functions matching /${match}/:`)
  for (const [name, us] of [...inclusive].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${pct(us)}  ${name}`)
}
