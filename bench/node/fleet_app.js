'use strict'
// One instance of the fleet scenario (bench/fleet.py): a Feathers 5 app with a memory `messages` service and the
// socket.io transport, its events shared with the other instances by @syncar/feathers (through the syncar daemon
// on spec.socket) or by the real feathers-sync 3.1.1 (on the broker at spec.uri, key spec.key).
//   node fleet_app.js '{"sync": "syncar" | "feathers-sync", "plugin": ..., "port": N, "socket": ..., "uri": ...,
//                       "key": ...}'
// spec.plugin: the directory of the @syncar/feathers to load (a checkout's clients/node), so that the fleet can run
// two checkouts side by side; "" for the one installed here.
// stdout: {"ready":true} once it listens and its sync is ready. SIGTERM: exit at once (the run is over).
const { feathers } = require('@feathersjs/feathers')
const socketio = require('@feathersjs/socketio')
const { MemoryService } = require('@feathersjs/memory')

const spec = JSON.parse(process.argv[2])
const STORE_RESET = 10000 // records the memory service may hold; nobody reads them back

const app = feathers()
app.configure(socketio({ transports: ['websocket'] }))
if (spec.sync === 'syncar') {
  app.configure(require(spec.plugin || '@syncar/feathers')({ socket: spec.socket }))
} else {
  const options = { uri: spec.uri, key: spec.key }
  // Its NATS adapter publishes through natsConnectionOptions only (a new connection per event), never the uri.
  if (spec.uri.startsWith('nats')) options.natsConnectionOptions = { servers: [spec.uri] }
  app.configure(require('feathers-sync')(options))
}
app.use('messages', new MemoryService({ id: 'id', startId: 0 }))
let stored = 0
app.service('messages').hooks({
  after: {
    create: [async (context) => {
      if (++stored >= STORE_RESET) { context.service.store = {}; stored = 0 }
    }]
  }
})
// Every socket.io client gets every event: its own instance's, and those the other instances' sync brings in.
app.on('connection', (connection) => app.channel('everybody').join(connection))
app.publish(() => app.channel('everybody'))

let errors = 0
// feathers-sync's NATS adapter publishes from an async listener nobody awaits: count its failures, do not die.
process.on('unhandledRejection', () => { errors++ })
process.once('SIGTERM', () => {
  process.stderr.write(`unhandled rejections: ${errors}\n`)
  process.exit(0)
})

Promise.all([app.listen(spec.port), app.sync.ready]).then(() => {
  process.stdout.write(JSON.stringify({ ready: true }) + '\n')
}, (err) => {
  process.stderr.write(`${err.stack || err}\n`)
  process.exit(1)
})
