'use strict'
// One instance of the fleet scenario (bench/fleet.py): a Feathers 5 app with a memory `messages` service and the
// socket.io transport, its events shared with the other instances by @syncar/feathers (through the syncar daemon
// on spec.socket) or by the real feathers-sync 3.1.1 (on the broker at spec.uri, key spec.key).
//   node fleet_app.js '{"sync": "syncar" | "feathers-sync", "plugin": ..., "port": N, "socket": ..., "uri": ...,
//                       "key": ..., "run": N}'
// spec.plugin: the directory of the @syncar/feathers to load (a checkout's clients/node), so that the fleet can run
// two checkouts side by side; "" for the one installed here.
// stdout: {"ready":true} once it listens and its sync is ready. On stdin, a first line: the measured run begins (what
// the sync told is counted from then): a full collection first (node --expose-gc), so that every contestant's apps
// start it collected, then {"ready":true} again; a second: {"hops":..., "told":..., "gc":...} and exit (the run is
// over); SIGTERM: exit at once.
// hops: when each message of run spec.run (fleet_clients.js's measured run) reached this app, in µs from its create
// (CLOCK_MONOTONIC, as the clients stamp it): `before`, the messages created through this app, at its first hook;
// `emitted`, every message at its `created` emit here (this app's own and those another instance's sync brought in).
// Flat [n, µs, n, µs, ...] lists, n the message's number; bench/fleet.py pairs them. With @syncar/feathers, the
// daemons' share by the wall clock (the publishing daemon stamps an event's `time` as it reads it): `hooked`, the
// wall-clock µs of each first hook here, and `relayed`, [n, stamp µs, emit µs, ...] for each message another
// instance's daemon stamped, as its `created` is emitted here.
// gc: the app's garbage collections during the measured run, from perf_hooks: `pauses` (all kinds), their `ms` in
// all and the longest (`max_ms`), and `full` (mark-compacts: kind major).
// told: what @syncar/feathers said this app missed during the measured run: `gap` frames (events of another
// instance its daemon never got from the broker: `missed`), `resume_gap` errors after its daemon cut it off as too
// slow (`resumes`, and the events they say are gone, `resume_missed`), and publishes it did not relay to the other
// instances (`refused`: syncar not keeping up, or refusing them); all 0 for feathers-sync, which tells nothing.
const { feathers } = require('@feathersjs/feathers')
const socketio = require('@feathersjs/socketio')
const { MemoryService } = require('@feathersjs/memory')
const readline = require('node:readline')
const { PerformanceObserver, constants, performance } = require('node:perf_hooks')

const spec = JSON.parse(process.argv[2])
const STORE_RESET = 10000 // records the memory service may hold; nobody reads them back

const app = feathers()
app.configure(socketio({ transports: ['websocket'] }))
const told = { gaps: 0, missed: 0, resumes: 0, resume_missed: 0, refused: 0 }
let refusedBefore = 0
if (spec.sync === 'syncar') {
  app.configure(require(spec.plugin || '@syncar/feathers')({ socket: spec.socket }))
  app.sync.on('gap', (frame) => {
    if (frame.type === 'gap') {
      told.gaps++
      told.missed += frame.missed
    } else { // a resume_gap error: `missed` where the daemon can count them
      told.resumes++
      told.resume_missed += frame.missed || 0
    }
  })
} else {
  const options = { uri: spec.uri, key: spec.key }
  // Its NATS adapter publishes through natsConnectionOptions only (a new connection per event), never the uri.
  if (spec.uri.startsWith('nats')) options.natsConnectionOptions = { servers: [spec.uri] }
  app.configure(require('feathers-sync')(options))
}
app.use('messages', new MemoryService({ id: 'id', startId: 0 }))
const nowUs = () => Number(process.hrtime.bigint() / 1000n)
const wallUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000)
const hops = { before: [], emitted: [], hooked: [], relayed: [] }
const stamp = (list, message) => { if (message.r === spec.run) list.push(message.n, nowUs() - message.t) }
let stored = 0
app.service('messages').hooks({
  before: {
    create: [async (context) => {
      stamp(hops.before, context.data)
      if (context.data.r === spec.run) hops.hooked.push(context.data.n, wallUs())
    }]
  },
  after: {
    create: [async (context) => {
      if (++stored >= STORE_RESET) { context.service.store = {}; stored = 0 }
    }]
  }
})
// Every socket.io client gets every event: its own instance's, and those the other instances' sync brings in.
app.on('connection', (connection) => app.channel('everybody').join(connection))
app.publish(() => app.channel('everybody'))
app.service('messages').on('created', (message, context) => {
  stamp(hops.emitted, message)
  const time = context && context.syncar && context.syncar.time
  if (message.r === spec.run && typeof time === 'number') hops.relayed.push(message.n, Math.round(time * 1e6), wallUs())
})

const gc = { pauses: 0, ms: 0, max_ms: 0, full: 0 }
let measuredFrom = Infinity // performance.now() when the measured run began; entries come later than their GC
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    if (entry.startTime < measuredFrom) continue
    gc.pauses++
    gc.ms += entry.duration
    gc.max_ms = Math.max(gc.max_ms, entry.duration)
    if (entry.detail.kind === constants.NODE_PERFORMANCE_GC_MAJOR) gc.full++
  }
}).observe({ entryTypes: ['gc'] })

let errors = 0
// feathers-sync's NATS adapter publishes from an async listener nobody awaits: count its failures, do not die.
process.on('unhandledRejection', () => { errors++ })
process.once('SIGTERM', () => {
  process.stderr.write(`unhandled rejections: ${errors}\n`)
  process.exit(0)
})

const dropped = () => (app.sync.stats ? app.sync.stats.dropped : 0)
let lines = 0
readline.createInterface({ input: process.stdin }).on('line', () => {
  if (++lines === 1) { // the measured run begins: what was told of the warm-up is not its
    for (const name of Object.keys(told)) told[name] = 0
    refusedBefore = dropped()
    // A light app's first full collection came seconds into its life, inside the measured run, where a heavier
    // app's came while it started (docs/benchmarks/history.md, "The Redis fleet's p99"): each starts the run from a
    // full collection instead.
    if (global.gc) global.gc()
    measuredFrom = performance.now()
    process.stdout.write(JSON.stringify({ ready: true }) + '\n')
    return
  }
  told.refused = dropped() - refusedBefore
  process.stdout.write(JSON.stringify({ hops, told, gc }) + '\n', () => process.exit(0))
})

Promise.all([app.listen(spec.port), app.sync.ready]).then(() => {
  process.stdout.write(JSON.stringify({ ready: true }) + '\n')
}, (err) => {
  process.stderr.write(`${err.stack || err}\n`)
  process.exit(1)
})
