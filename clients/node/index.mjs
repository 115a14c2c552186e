// ESM entry: the same objects as the CommonJS entry (one SYNC symbol, one implementation).
import syncar from './index.js';

export const { SYNC, isRemote, defaultSocketPath, DEFAULTS } = syncar;
export { syncar };
export default syncar;
