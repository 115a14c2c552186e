// A Feathers 5 app with the real feathers-sync 3.1.1, driven over stdin/stdout by tests/interop:
//   argv: <broker uri> <key>
//   stdin lines:  {"create": {...}} | {"patch": [id, {...}]} | {"remove": id} | {"custom": {...}}
//   stdout lines: {"ready": true} once feathers-sync is subscribed, then one
//                 {"event", "path", "data", "params"} per service event this app's listeners see.
const readline = require('node:readline')
const { feathers } = require('@feathersjs/feathers')
const { MemoryService } = require('@feathersjs/memory')
const sync = require('feathers-sync')

const [uri, key] = process.argv.slice(2)
const app = feathers()
const options = { uri, key }
if (uri.startsWith('nats')) options.natsConnectionOptions = { servers: [uri] }
app.configure(sync(options))
app.use('messages', new MemoryService({ id: 'id', startId: 1000 }), { events: ['typing'] })

const messages = app.service('messages')
const print = (line) => process.stdout.write(JSON.stringify(line) + '\n')
for (const event of ['created', 'patched', 'removed', 'typing']) {
  messages.on(event, (data, context) => print({ event, path: 'messages', data, params: context && context.params }))
}

readline.createInterface({ input: process.stdin }).on('line', async (line) => {
  const command = JSON.parse(line)
  if (command.create) await messages.create(command.create, { provider: 'rest', from: 'feathers-sync' })
  if (command.patch) await messages.patch(command.patch[0], command.patch[1])
  if (command.remove !== undefined) await messages.remove(command.remove)
  if (command.custom) messages.emit('typing', command.custom)
})

app.sync.ready.then(() => print({ ready: true }))
