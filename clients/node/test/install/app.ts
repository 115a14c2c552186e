// A small app as a user writes it, compiled by test/install.test.js against the installed plugin: app.sync must
// be typed (the plugin augments @feathersjs/feathers's Application), with `module` nodenext and commonjs.
import { feathers, HookContext } from '@feathersjs/feathers';
import syncar = require('@syncar/feathers');

const app = feathers();
app.configure(syncar({ socket: '/run/syncar/syncar.sock', serialize: (payload) => JSON.stringify(payload) }));
const published: number = app.sync.stats.published;
const remote = (context: HookContext): boolean => syncar.isRemote(context) && context.syncar?.origin !== null;
console.log(published, remote);
