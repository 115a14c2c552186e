// A Feathers 5 app with the real feathers-sync 3.1.1 (or @syncar/feathers), driven over stdin/stdout by tests/interop:
//   argv: <broker uri> <key> [json|bson] [feathers-sync|syncar]   (with syncar, the "broker uri" is syncar's socket)
//   stdin lines:  {"create": {...}} | {"patch": [id, {...}]} | {"remove": id} | {"custom": {...}}
//                 (a top-level {"$date": iso} in their data becomes a Date; the memory service makes it a string)
//   stdout lines: {"ready": true} once subscribed, then one {"event", "path", "data", "params", "kinds"} per service
//                 event this app's listeners see (kinds: the constructor of each top-level value of data), and with
//                 feathers-sync, {"out": base64} / {"in": base64} for each binary message it publishes / receives.
const readline = require('node:readline')
const { BSON } = require('bson')
const { feathers } = require('@feathersjs/feathers')
const { MemoryService } = require('@feathersjs/memory')

const [uri, key, serializer = 'json', plugin = 'feathers-sync'] = process.argv.slice(2)
const print = (line) => process.stdout.write(JSON.stringify(line) + '\n')
const app = feathers()
const options = serializer === 'bson' ? { serialize: (p) => BSON.serialize(p), deserialize: (b) => BSON.deserialize(b) } : {}
if (plugin === 'syncar') {
  const syncar = require('../../clients/node')
  app.configure(syncar({ socket: uri, logger: null, ...options }))
} else {
  Object.assign(options, { uri, key })
  if (uri.startsWith('nats')) options.natsConnectionOptions = { servers: [uri] }
  app.configure(require('feathers-sync')(options))
  if (serializer !== 'json') {
    app.on('sync-out', (data) => print({ out: Buffer.from(data).toString('base64') }))
    app.prependListener('sync-in', (data) => print({ in: Buffer.from(data).toString('base64') })) // before the event's own line
  }
}
app.use('messages', new MemoryService({ id: 'id', startId: 1000 }), { events: ['typing'] })

const messages = app.service('messages')
const kinds = (data) => Object.fromEntries(Object.entries(data || {}).map(([k, v]) => [k, v?.constructor?.name ?? null]))
for (const event of ['created', 'patched', 'removed', 'typing']) {
  messages.on(event, (data, context) => print({ event, path: 'messages', data, params: context && context.params, kinds: kinds(data) }))
}

const revive = (data) => Object.fromEntries(Object.entries(data).map(([k, v]) => [k, v && v.$date ? new Date(v.$date) : v]))
readline.createInterface({ input: process.stdin }).on('line', async (line) => {
  const command = JSON.parse(line)
  if (command.create) await messages.create(revive(command.create), { provider: 'rest', from: plugin })
  if (command.patch) await messages.patch(command.patch[0], command.patch[1])
  if (command.remove !== undefined) await messages.remove(command.remove)
  if (command.custom) messages.emit('typing', revive(command.custom))
})

app.sync.ready.then(() => print({ ready: true }))
