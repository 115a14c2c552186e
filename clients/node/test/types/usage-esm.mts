// Compiled (never run) by `npm test`: the same types from an ES module.
import { feathers } from '@feathersjs/feathers';
import syncar, { SYNC, isRemote, type SyncarOptions } from '@syncar/feathers';

const options: SyncarOptions = { socket: '/tmp/syncar.sock', subscribe: 'messages' };
const app = feathers();
app.configure(syncar(options));
app.service('messages' as never);
const symbol: symbol = SYNC;
const remote: boolean = isRemote({});
void [symbol, remote, app.sync.stats.published];
