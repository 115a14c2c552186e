'use strict'
// The incumbent in syncar's benchmark: a Feathers 5 app with @feathersjs/memory and the real feathers-sync 3.1.1.
//   node feathers_bench.js '<spec as JSON>'   (the same spec as bench/worker.py; see bench/tally.py)
// role "pub" creates messages (feathers-sync publishes each created event); role "sub" counts the created events
// feathers-sync delivers to its listeners. stdout: {"ready":true}, then {"result":..., "usage":...}.
// The flow file (bench/flow.py) carries the subscriber's count to the publisher, which keeps at most a window of
// events in flight; offsets: 0 received, 8 sent, 16 done (little-endian u64).
const fs = require('node:fs')
const { feathers } = require('@feathersjs/feathers')
const { MemoryService } = require('@feathersjs/memory')
const sync = require('feathers-sync')

const spec = JSON.parse(process.argv[2])
const CHUNK = 256 // events created at once at most in a throughput run, as the Python publishers do
const STORE_RESET = 10000 // records the memory service may hold; the benchmark never reads them back
const IDLE_AFTER_DONE = 1.0
const SAMPLE_EVERY = 0.01

const flowFd = fs.openSync(spec.flow, 'r+')
const u64 = Buffer.alloc(8)
const readU64 = (offset) => { fs.readSync(flowFd, u64, 0, 8, offset); return Number(u64.readBigUInt64LE(0)) }
const writeU64 = (offset, value) => { u64.writeBigUInt64LE(BigInt(value)); fs.writeSync(flowFd, u64, 0, 8, offset) }
// CLOCK_MONOTONIC, as Python's time.monotonic() and time.monotonic_ns() read it.
const monotonic = () => Number(process.hrtime.bigint()) / 1e9
const nowUs = () => Number(process.hrtime.bigint() / 1000n)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const say = (line) => process.stdout.write(JSON.stringify(line) + '\n') // short lines: written at once

let errors = 0
// feathers-sync's NATS adapter publishes from an async listener nobody awaits: count its failures, do not die.
process.on('unhandledRejection', () => { errors++ })

const app = feathers()
const options = { uri: spec.target, key: spec.key }
// Its NATS adapter publishes through natsConnectionOptions only (a new connection per event), never the uri.
if (spec.target.startsWith('nats')) options.natsConnectionOptions = { servers: [spec.target] }
app.configure(sync(options))
app.use('messages', new MemoryService({ id: 'id', startId: 0 }))
const messages = app.service('messages')
const started = monotonic()
const deadline = started + spec.deadline

function report (result) {
  const cpu = process.cpuUsage()
  const line = JSON.stringify({ result: { ...result, errors }, usage: { cpu_s: (cpu.user + cpu.system) / 1e6, maxrss_kib: process.resourceUsage().maxRSS } })
  // A long line outgrows the pipe: exit only once all of it is written.
  process.stdout.write(line + '\n', () => process.exit(0))
}

function subscribe () {
  const latency = spec.rate > 0
  const samples = []
  const latencies = []
  let received = 0
  let first = 0
  let last = 0
  messages.on('created', (data) => {
    const now = monotonic()
    if (!received) { first = now; samples.push([now, 0]) }
    received++
    last = now
    if (latency) latencies.push(nowUs() - data.t)
    if ((received & 31) === 0) writeU64(0, received)
    if (now - samples[samples.length - 1][0] >= SAMPLE_EVERY) samples.push([now, received])
  })
  app.sync.ready.then(() => {
    say({ ready: true })
    const timer = setInterval(() => {
      writeU64(0, received)
      const now = monotonic()
      let finished = now > deadline
      if (!finished && readU64(16) !== 0) {
        finished = received >= readU64(8) || now - Math.max(last, started) > IDLE_AFTER_DONE
      }
      if (finished) {
        clearInterval(timer)
        samples.push([last, received])
        report({ received, first, last, samples, latencies_us: latencies, bad: 0, timed_out: now > deadline })
      }
    }, 20)
  })
}

async function publish () {
  const pad = 'x'.repeat(Math.max(spec.size - JSON.stringify({ n: 100000, t: nowUs(), text: '', id: 100000 }).length, 0))
  await app.sync.ready
  say({ ready: true })
  const start = monotonic()
  const end = start + spec.duration
  let sent = 0
  let maxLag = 0
  let writes = 0
  let stored = 0
  for (;;) {
    const now = monotonic()
    if (now >= end || sent >= spec.count) break
    const room = spec.window - (sent - readU64(0))
    if (room <= 0) { await sleep(spec.rate ? 1 : 0); continue }
    let count
    if (!spec.rate) {
      count = Math.min(room, CHUNK, spec.count - sent)
    } else {
      const due = Math.min(Math.floor((now - start) * spec.rate) + 1, spec.count) - sent
      if (due <= 0) { await sleep(1); continue }
      maxLag = Math.max(maxLag, now - (start + sent / spec.rate))
      count = Math.min(due, room)
    }
    const t = nowUs()
    const pending = []
    for (let i = 0; i < count; i++) pending.push(messages.create({ n: sent + i, t, text: pad }, { provider: 'rest' }))
    await Promise.all(pending)
    sent += count
    writes++
    stored += count
    if (stored >= STORE_RESET) { messages.store = {}; stored = 0 }
    // Let the broker client's I/O run between chunks, as a real server's would between requests.
    if (!spec.rate) await new Promise(setImmediate)
  }
  const elapsed = monotonic() - start
  writeU64(8, sent)
  writeU64(16, 1)
  // feathers-sync publishes in the background: stay up until the subscriber has everything or has given up.
  let seen = readU64(0)
  let progress = monotonic()
  while (seen < sent && monotonic() < deadline && monotonic() - progress < IDLE_AFTER_DONE + 1) {
    await sleep(20)
    const now = readU64(0)
    if (now !== seen) { seen = now; progress = monotonic() }
  }
  report({ sent, elapsed, max_lag: maxLag, writes })
}

if (spec.role === 'sub') subscribe()
else publish()
