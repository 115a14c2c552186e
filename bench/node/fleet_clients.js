'use strict'
// The real-time clients of the fleet scenario (bench/fleet.py): one Feathers client over socket.io (WebSocket) per
// instance, all in this process, creating messages round-robin through them and timing each one from `create` to
// the `created` event of every *other* client.
//   node fleet_clients.js '{"urls": [...], "rate": N (0: as fast as the window allows), "duration": s,
//                           "count": max events a run, "window": max events not yet seen by every other client,
//                           "warmup": s of the same before ready, "size": B, "deadline": s}'
// stdout: {"ready":true} once connected and warmed up; it then waits for a line on stdin to start (the caller
// begins measuring in between), and ends with {"result":..., "usage":...}.
const readline = require('node:readline')
const io = require('socket.io-client')
const { feathers } = require('@feathersjs/feathers')
const socketio = require('@feathersjs/socketio-client')

const spec = JSON.parse(process.argv[2])
const CHUNK = 64 // creates sent at once at most, unpaced
// Seconds with nothing received after the last create: the rest is lost. An app its daemon cut off as too slow is
// back after the daemon's close grace (2 s) and the plugin's reconnect delay (up to 5 s), with what the replay buffer
// held. The bound was 1 s, and what came after such a silence was counted lost: it is reported as `late`.
const IDLE_AFTER_DONE = 8.0
const STALL = 1.0
const CONNECT_TIMEOUT = 30.0

const nowUs = () => Number(process.hrtime.bigint() / 1000n) // CLOCK_MONOTONIC, as Python's reads it
const monotonic = () => nowUs() / 1e6
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const say = (line) => new Promise((resolve) => process.stdout.write(JSON.stringify(line) + '\n', resolve))

const n = spec.urls.length
const expected = n - 1 // every event reaches each other client once
let phase = null // the run under way: its counts and latencies; events of another run are left out

const clients = spec.urls.map((url, index) => {
  const socket = io(url, { transports: ['websocket'], upgrade: false, reconnection: false })
  const service = feathers().configure(socketio(socket, { timeout: 30000 })).service('messages')
  service.on('created', (message) => {
    if (message.c === index || phase === null || message.r !== phase.id) return
    const now = nowUs()
    phase.received++
    phase.last = now
    phase.latencies.push(now - message.t)
    if (phase.wake) { phase.wake(); phase.wake = null }
  })
  return { socket, service }
})

async function connected () {
  await Promise.all(clients.map(({ socket }) => new Promise((resolve, reject) => {
    if (socket.connected) resolve()
    socket.once('connect', resolve)
    socket.once('connect_error', reject)
  })))
}

/** Creates messages round-robin for `duration` seconds at spec.rate (or within the window), then waits until the
 * other clients have them all (or nothing came for IDLE_AFTER_DONE; `late`: those received after a silence of
 * STALL). Run `id` marks its messages. */
async function run (id, duration) {
  const pad = 'x'.repeat(Math.max(spec.size - JSON.stringify({ c: 0, r: 0, t: nowUs(), n: 100000, text: '', id: 100000 }).length, 0))
  phase = { id, received: 0, last: 0, errors: 0, latencies: [], wake: null }
  const current = phase
  const create = (index) => {
    clients[index % n].service.create({ c: index % n, r: id, t: nowUs(), n: index, text: pad }).catch(() => { current.errors++ })
  }
  const start = monotonic()
  const end = start + duration
  const deadline = start + spec.deadline
  let sent = 0
  let maxLag = 0
  for (;;) {
    const now = monotonic()
    if (now >= end || sent >= spec.count) break
    if (spec.rate) {
      const due = start + sent / spec.rate
      if (due > now) { await sleep(Math.max(1, (due - now) * 1000)); continue }
      maxLag = Math.max(maxLag, now - due)
      const count = Math.min(Math.floor((now - start) * spec.rate) + 1, spec.count) - sent
      for (let i = 0; i < count; i++, sent++) create(sent)
      continue
    }
    const room = spec.window - (sent - Math.floor(current.received / expected))
    if (room <= 0) {
      await Promise.race([new Promise((resolve) => { current.wake = resolve }), sleep(100)])
      continue
    }
    for (let i = Math.min(room, CHUNK); i > 0; i--, sent++) create(sent)
    await new Promise(setImmediate) // let the sockets' I/O run, as a browser's would
  }
  const elapsed = monotonic() - start
  let progress = monotonic()
  let seen = current.received
  let beforeStall = null // deliveries received when a silence of STALL first ended
  while (current.received < sent * expected && monotonic() < deadline && monotonic() - progress < IDLE_AFTER_DONE) {
    await sleep(10)
    if (current.received !== seen) {
      if (beforeStall === null && monotonic() - progress >= STALL) beforeStall = seen
      seen = current.received
      progress = monotonic()
    }
  }
  return {
    sent,
    received: current.received,
    expected: sent * expected,
    elapsed,
    last_s: current.last / 1e6 - start,
    max_lag: maxLag,
    errors: current.errors,
    late: beforeStall === null ? 0 : current.received - beforeStall,
    latencies_us: current.latencies
  }
}

async function main () {
  const timer = setTimeout(() => { process.stderr.write('not connected in time\n'); process.exit(1) }, CONNECT_TIMEOUT * 1000)
  await connected()
  clearTimeout(timer)
  const warm = await run(1, spec.warmup) // JIT, buffers, connections: the first second is slower than the rest
  // Losses are the contestant's (feathers-sync on NATS drops events when it falls behind): told, not fatal.
  if (!warm.received) throw new Error(`warm-up: none of ${warm.expected} deliveries received`)
  await say({ ready: true })
  await new Promise((resolve) => readline.createInterface({ input: process.stdin }).once('line', resolve))
  const result = await run(2, spec.duration)
  const cpu = process.cpuUsage()
  const usage = { cpu_s: (cpu.user + cpu.system) / 1e6, maxrss_kib: process.resourceUsage().maxRSS }
  await say({ result: { ...result, warmup: { sent: warm.sent, received: warm.received, expected: warm.expected } }, usage })
  process.exit(0)
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`)
  process.exit(1)
})
