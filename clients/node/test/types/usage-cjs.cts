// Compiled (never run) by `npm test`: the hand-written types must fit real use from CommonJS.
import { feathers, HookContext } from '@feathersjs/feathers';
import syncar = require('@syncar/feathers');
import { BSON } from 'bson';

const app = feathers();
app.configure(syncar({ socket: '/run/syncar/syncar.sock' }));
app.configure(syncar({
  subscribe: ['messages', { path: 'users', event: 'patched' }],
  reconnect: { minDelay: 100, maxDelay: 2000 },
  clientId: process.env.APP_CLIENT_ID,
  maxPending: 100,
  maxFrameBytes: 512 * 1024,
  serialize: (payload) => JSON.stringify(payload),
  deserialize: (text) => JSON.parse(text),
  logger: null,
}));
app.configure(syncar.default({ subscribe: false }));
// A binary serializer, as with feathers-sync (BSON here).
app.configure(syncar({ serialize: (payload) => BSON.serialize(payload), deserialize: (bytes: Uint8Array) => BSON.deserialize(bytes) }));

const type: 'syncar' = app.sync.type;
const ready: Promise<void> = app.sync.ready;
app.sync.on('warning', (warning) => console.log(warning.code, warning.message));
app.sync.on('connect', (welcome) => console.log(welcome.instance, welcome.resumed));
app.sync.on('gap', (gap: syncar.SyncarGap) => {
  if (gap.type === 'gap') {
    const missed: number = gap.missed;
    console.log(gap.origin, missed, gap.first, gap.last, gap.run, gap.reason);
  } else {
    console.log(gap.code, gap.message);
  }
});

function hook(context: HookContext) {
  (context as any)[syncar.SYNC] = false;
  if (syncar.isRemote(context)) {
    const origin: string | null = context.syncar.origin;
    console.log(origin);
  }
  const mark: syncar.SyncarMark | undefined = context.syncar;
  return mark;
}

const options: syncar.SyncarOptions = { socket: syncar.defaultSocketPath() };
void [type, ready, hook, options, app.sync.close()];
