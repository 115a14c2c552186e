'use strict';

/**
 * Resolve true once `emitter` emits `event` and `done()` holds, false after `timeout` ms.
 * @returns {Promise<boolean>}
 */
function waitFor(emitter, event, timeout, done) {
  return new Promise((resolve) => {
    if (done()) {
      resolve(true);
      return;
    }
    const listener = () => {
      if (done()) {
        finish(true);
      }
    };
    const timer = setTimeout(() => finish(false), timeout);
    function finish(result) {
      clearTimeout(timer);
      emitter.off(event, listener);
      resolve(result);
    }
    emitter.on(event, listener);
  });
}

module.exports = { waitFor };
