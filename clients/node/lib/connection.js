'use strict';

/**
 * One app's connection to its syncar: protocol v1 over a unix socket (docs/protocol.md).
 *
 * Modelled on the Python client (sidecar/client.py): reconnects with jittered exponential back-off,
 * resumes from the last `seq` it handled, and holds publishes while it is disconnected, bounded in
 * count and bytes. Every publish asks for an `ack`, and stays held until the daemon acknowledged it
 * (the broker accepted it), so publishes written just before the daemon went away are sent again
 * after the reconnect instead of being lost with the socket's buffers. A daemon that offers barriers
 * (docs/protocol.md#barrier) acknowledges many publishes with one `ack`: a frame read and parsed per
 * publish cost the app 50-100 us of CPU each at 1,000 events/s.
 */

const net = require('node:net');
const crypto = require('node:crypto');
const { EventEmitter } = require('node:events');
const { Backoff } = require('./backoff');
const { HeldPublishes } = require('./held');
const { debug, describeError } = require('./warnings');
const { LineSplitter } = require('./lines');
const { waitFor } = require('./wait');

const PROTOCOL_VERSION = 1;
const EVENT_PREFIX = '{"type":"event"';
/** A daemon that accepted the connection but sends no welcome within this time is given up on. */
const HANDSHAKE_TIMEOUT_MS = 10_000;
const DEDUP_WINDOW = 10_000; // event ids remembered to drop redeliveries
/** The socket is read into one buffer of this size, reused: no Buffer and no stream 'data' event per read. */
const READ_BUFFER_BYTES = 64 * 1024;
/**
 * With barriers, one is sent once this many publishes (at most a quarter of maxPending, or of maxPendingBytes) are
 * not covered by one, or this many ms after the first of them: publishes stay held that much longer, and a daemon
 * restart re-sends them, which receivers drop by id while they remember it (100,000 events).
 */
const BARRIER_EVERY = 256;
const BARRIER_DELAY_MS = 100;

/** What `publish` did with an event. */
const Published = Object.freeze({
  SENT: 'sent', // written to the socket
  HELD: 'held', // kept, to be written once connected (or once the socket drains)
  FULL: 'full', // not kept: the held publishes are at their limit
  TOO_LARGE: 'too_large', // not kept: the frame is over maxFrameBytes
  CLOSED: 'closed', // close() was called
});

class Connection extends EventEmitter {
  /**
   * @param {object} options socket, name, clientId (null: a random one), subscribe, reconnect and the size limits, as normalised by
   *   options.js; plus parseEvent(line) -> object (the app's deserialize) and warn(code, message).
   */
  constructor(options) {
    super();
    this.options = options;
    // A secret shared with the daemon only: the daemon puts our event ids on the bus in a scope made from it, so
    // no other app can publish an id of ours (docs/protocol.md). It stays the same across reconnects, so a publish
    // sent again after a lost ack keeps its identity and is de-duplicated; the `clientId` option keeps it across
    // processes too.
    this.clientId = options.clientId ?? crypto.randomBytes(16).toString('hex');
    this._idPrefix = crypto.randomBytes(6).toString('base64url'); // ids of this process, whatever its clientId
    this.instance = null;
    this.broker = null;
    this.daemonMaxFrameBytes = null; // told by the daemon's welcome (--max-frame-bytes)
    this.connected = false;
    this.closed = false;
    this.lost = false;
    // Recent (origin, id) pairs: after a daemon restart in durable mode an event may come again.
    this._seen = new Set();
    this._epoch = null;
    this._seq = 0;
    this._ids = 0;
    this._socket = null;
    this._lastError = null; // the socket's error, said when it closes
    const { reconnect } = options;
    this._backoff = reconnect === false ? null : new Backoff(reconnect.minDelay, reconnect.maxDelay);
    this._timer = null;
    this._handshakeTimer = null;
    this._lines = new LineSplitter(options.maxReceiveBytes, (line) => this._line(line), () => this._oversized());
    this._everConnected = false;
    this._held = new HeldPublishes(options.maxPending, options.maxPendingBytes);
    this.barriers = false; // the daemon acknowledges by barrier (its welcome said so)
    this._barrier = null; // the one sent and not yet answered, { id, n }: one at a time
    this._barrierTimer = null;
    this._barrierEvery = Math.max(1, Math.min(BARRIER_EVERY, Math.floor(options.maxPending / 4)));
    this._barrierBytes = options.maxPendingBytes / 4;
    this._uncovered = 0; // publishes written since the last barrier, and their bytes
    this._uncoveredBytes = 0;
    this._lastWritten = 0; // the number of the last publish written
    this._draining = false; // close() waits for the held publishes: a barrier goes at once
  }

  get held() {
    return this._held.count;
  }

  get heldBytes() {
    return this._held.bytes;
  }

  /** The largest publish frame sent: maxFrameBytes, or the daemon's limit once it told a smaller one. */
  get maxFrameBytes() {
    const daemon = this.daemonMaxFrameBytes;
    return daemon !== null && daemon < this.options.maxFrameBytes ? daemon : this.options.maxFrameBytes;
  }

  start() {
    this._connect();
  }

  // -- publishing -------------------------------------------------------------------------------

  /**
   * Send one event whose serialised form is `body`, the JSON text of an object with `event` and
   * `path` (and `data`, `context`); `trace` is '' or its trace context's fields (lib/trace.js). Never throws.
   *
   * @returns {{ status: string, bytes: number }}
   */
  publish(body, trace = '') {
    if (this.closed) {
      return { status: Published.CLOSED, bytes: 0 };
    }
    this._ids += 1;
    const id = `${this._idPrefix}-${this._ids}`;
    const open = body.indexOf('{');
    const rest = body.slice(open + 1).trimStart();
    const separator = rest.startsWith('}') ? '' : ',';
    const text = `{"type":"publish","id":"${id}","ack":true${trace}${separator}${rest}\n`;
    const bytes = Buffer.byteLength(text);
    if (bytes - 1 > this.maxFrameBytes) {
      return { status: Published.TOO_LARGE, bytes: bytes - 1 };
    }
    const writable = this.connected && !this._held.unwritten && !this._congested();
    if (!writable && !this._held.fits(bytes)) {
      return { status: Published.FULL, bytes };
    }
    const { line, block } = this._held.blocks.store(text, bytes);
    const entry = { id, line, block, bytes, n: this._ids, resend: false };
    if (!writable) {
      this._held.queue(entry);
      return { status: Published.HELD, bytes };
    }
    const forgotten = this._held.forgetOldest(bytes);
    this._held.written(entry);
    this._write(line);
    this._written(entry);
    if (forgotten > 0) {
      this._ackBacklog();
    }
    return { status: Published.SENT, bytes };
  }

  /**
   * Publishes made in one run of microtasks (a burst of service calls) go out in one system call: the socket is
   * corked at the first and uncorked by a microtask queued then, which runs before the work that their local
   * listeners queue (the write comes first in the service's emit), so a lone publish waits for nothing.
   */
  _write(line) {
    const socket = this._socket;
    if (!socket.writableCorked) {
      socket.cork();
      queueMicrotask(() => socket.uncork());
    }
    socket.write(line);
  }

  _congested() {
    return this._socket !== null && this._socket.writableLength > this.options.writeBufferBytes;
  }

  /**
   * Connected, but the daemon has not acknowledged `maxPending` publishes (its broker is away): the oldest
   * ones were no longer kept for re-sending. They are with the daemon, whose outbox holds them; only a
   * daemon restart before the broker is back would lose them.
   */
  _ackBacklog() {
    this.options.warn('ack_backlog', `${this.held} publishes are not yet acknowledged by syncar (a burst, or its ` +
      'broker is down); the oldest are no longer kept for re-sending should syncar restart now (maxPending/maxPendingBytes)');
  }

  _settle(id) {
    if (this._held.settle(id) && this.held === 0) {
      this.emit('settled');
    }
  }

  /** Write held publishes, in order, until the socket's buffer is full again. */
  _flush() {
    if (this.connected) {
      this._held.writeQueued((entry) => {
        this._socket.write(entry.line);
        this._written(entry);
      }, () => !this._congested());
    }
  }

  // -- barriers (docs/protocol.md#barrier) ------------------------------------------------------

  /** `entry` was written: with barriers, it is covered by the next one. */
  _written(entry) {
    if (this.barriers) {
      this._lastWritten = entry.n;
      this._uncovered += 1;
      this._uncoveredBytes += entry.bytes;
      this._barrierDue();
    }
  }

  /** Send a barrier now if enough publishes wait for one (or close() waits for them), else in BARRIER_DELAY_MS. */
  _barrierDue() {
    if (this._barrier !== null || this._uncovered === 0) {
      return; // the answer to the one in flight calls this again
    }
    if (this._uncovered >= this._barrierEvery || this._uncoveredBytes >= this._barrierBytes || this._draining) {
      this._sendBarrier();
    } else if (this._barrierTimer === null) {
      this._barrierTimer = setTimeout(() => this._sendBarrier(), BARRIER_DELAY_MS);
      this._barrierTimer.unref();
    }
  }

  _sendBarrier() {
    clearTimeout(this._barrierTimer);
    this._barrierTimer = null;
    if (!this.connected || this._barrier !== null || this._uncovered === 0) {
      return;
    }
    const n = this._lastWritten;
    this._barrier = { id: `${this._idPrefix}-b${n}`, n };
    this._uncovered = 0;
    this._uncoveredBytes = 0;
    this._write(`{"type":"barrier","id":"${this._barrier.id}"}\n`);
  }

  /** Every publish written before the barrier in flight is settled: refused ones were let go at their nack. */
  _barrierAnswered() {
    const { n } = this._barrier;
    this._barrier = null;
    if (this._held.settleThrough(n) > 0 && this.held === 0) {
      this.emit('settled');
    }
    this._barrierDue();
  }

  // -- the connection ---------------------------------------------------------------------------

  _connect() {
    this._timer = null;
    if (this.closed) {
      return;
    }
    const buffer = Buffer.allocUnsafe(READ_BUFFER_BYTES);
    const onread = { buffer, callback: (bytes) => this._lines.feed(buffer.subarray(0, bytes)) };
    const socket = net.createConnection({ path: this.options.socket, onread });
    this._socket = socket;
    this._lines.reset();
    socket.on('connect', () => this._hello(socket));
    socket.on('drain', () => this._flush());
    socket.on('error', (err) => this._socketError(err));
    socket.on('close', () => this._socketClosed(socket));
  }

  _hello(socket) {
    const hello = {
      type: 'hello',
      version: PROTOCOL_VERSION,
      client: this.options.name,
      client_id: this.clientId,
      echo: false,
      barriers: true,
    };
    if (this.options.subscribe !== undefined) {
      hello.subscribe = this.options.subscribe;
    }
    if (this._epoch !== null) {
      hello.resume = { epoch: this._epoch, seq: this._seq };
    }
    socket.write(`${JSON.stringify(hello)}\n`);
    this._handshakeTimer = setTimeout(() => {
      this.options.warn('handshake', `syncar at ${this.options.socket} accepted the connection but sent no welcome ` +
        `within ${HANDSHAKE_TIMEOUT_MS / 1000}s; reconnecting`);
      socket.destroy();
    }, HANDSHAKE_TIMEOUT_MS);
    this._handshakeTimer.unref();
  }

  _socketError(err) {
    this._lastError = err;
    debug('socket error: %s', describeError(err));
  }

  _socketClosed(socket) {
    if (socket !== this._socket) {
      return;
    }
    clearTimeout(this._handshakeTimer);
    this._socket = null;
    this._lines.stopped = true; // what is left of this socket's bytes is not fed on
    const wasConnected = this.connected;
    this.connected = false;
    // A barrier in flight is not answered on another connection: what it covered is written again after the welcome.
    clearTimeout(this._barrierTimer);
    this._barrierTimer = null;
    this._barrier = null;
    this._uncovered = 0;
    this._uncoveredBytes = 0;
    if (wasConnected) {
      this.emit('disconnect');
    }
    if (this.closed) {
      this.emit('closed');
      return;
    }
    // A socket error's code (ENOENT, ECONNREFUSED) says it: its message repeats the socket's path.
    const reason = this._lastError === null ? 'connection closed' : this._lastError.code || describeError(this._lastError);
    this._lastError = null;
    if (this._backoff === null) {
      this.closed = true;
      this.lost = true; // closed by the daemon or the network, not by close()
      this.options.warn('disconnected', `${wasConnected ? 'lost' : 'cannot reach'} syncar at ${this.options.socket} (${reason}); reconnect is off`);
      this.emit('closed', new Error(`cannot reach syncar at ${this.options.socket}: ${reason}`));
      return;
    }
    const delay = Math.round(this._backoff.next());
    if (wasConnected || this._backoff.attempts === 1) {
      this.options.warn('disconnected', `${wasConnected ? 'lost' : 'cannot reach'} syncar at ${this.options.socket} ` +
        `(${reason}); reconnecting with back-off, events are emitted locally and ${this.held} publishes are held meanwhile`);
    } else {
      debug('reconnect attempt %d failed (%s); next in %dms', this._backoff.attempts, reason, delay);
    }
    this._timer = setTimeout(() => this._connect(), delay);
  }

  /**
   * Close the connection. Waits up to `timeout` ms for held publishes to be acknowledged first.
   * @returns {Promise<void>}
   */
  async close(timeout = 2000) {
    if (this.closed && this._socket === null) {
      return;
    }
    if (this.connected && this.held > 0 && timeout > 0) {
      this._draining = true;
      this._barrierDue();
      await waitFor(this, 'settled', timeout, () => this.held === 0);
    }
    this.closed = true;
    clearTimeout(this._timer);
    this._timer = null;
    const socket = this._socket;
    if (socket === null) {
      this.emit('closed');
      return;
    }
    const done = waitFor(this, 'closed', 1000, () => this._socket === null);
    socket.end();
    if (!(await done)) {
      socket.destroy();
    }
    const dropped = this.held;
    if (dropped > 0) {
      this.options.warn('closed_with_pending', `closed with ${dropped} publishes not acknowledged by syncar`);
    }
  }

  // -- frames in --------------------------------------------------------------------------------

  _oversized() {
    this.options.warn('frame_too_large', `dropped a frame from syncar longer than maxReceiveBytes ` +
      `(${this.options.maxReceiveBytes} bytes); an event was lost`);
  }

  _line(line) {
    if (line.startsWith(EVENT_PREFIX)) {
      this._event(line);
      return;
    }
    let frame;
    try {
      frame = JSON.parse(line);
    } catch (err) {
      this.options.warn('bad_frame', `syncar sent a line that is not JSON (${describeError(err)})`);
      return;
    }
    switch (frame && frame.type) {
      case 'ack':
        if (this._barrier !== null && frame.id === this._barrier.id) {
          this._barrierAnswered();
        } else {
          this._settle(frame.id);
        }
        break;
      case 'nack':
        // The daemon is stopping and its broker did not take it: sent again to the next one, as when a daemon goes
        // away before answering (unless reconnect is off).
        if (frame.code === 'stopping' && this._backoff !== null && this._held.keepForNext(frame.id)) {
          break;
        }
        this._settle(frame.id);
        this.emit('refused', frame);
        break;
      case 'welcome':
        this._welcome(frame);
        break;
      case 'status':
        this.broker = frame.broker === 'up' ? 'up' : 'down';
        this.emit('status', frame);
        break;
      case 'error':
        this._error(frame);
        break;
      case 'gap': // events of another instance the daemon never got from the broker (docs/protocol.md#gap)
        this.emit('gap', frame);
        this.options.warn('missed', `syncar missed ${frame.missed} events of ${frame.origin} on the bus (${frame.reason})`);
        break;
      case 'event':
        this._event(line, frame);
        break;
      default:
        break; // pong, and frame types added later in version 1
    }
  }

  _event(line, parsed) {
    let frame;
    let failure = null;
    try {
      frame = this.options.parseEvent(line);
    } catch (err) {
      failure = err;
      try {
        frame = parsed || JSON.parse(line);
      } catch {
        frame = null;
      }
    }
    if (frame && typeof frame.seq === 'number') {
      this._seq = frame.seq;
    }
    if (failure !== null) {
      this.options.warn('deserialize', `cannot deserialize an event from syncar (${describeError(failure)}); it was dropped`);
      return;
    }
    if (frame === null || typeof frame !== 'object') {
      this.options.warn('deserialize', 'deserialize returned no object for an event from syncar; it was dropped');
      return;
    }
    if (this._duplicate(frame)) return;
    this.emit('event', frame);
  }

  _duplicate(frame) {
    if (frame.origin == null || frame.id == null) return false; // feathers-sync peers send neither
    const key = `${frame.origin}\u0000${frame.id}`;
    if (this._seen.has(key)) return true;
    this._seen.add(key);
    if (this._seen.size > DEDUP_WINDOW) this._seen.delete(this._seen.values().next().value);
    return false;
  }

  _error(frame) {
    if (frame.code === 'resume_gap') {
      this.emit('gap', frame);
      const missed = typeof frame.missed === 'number'
        ? `${frame.missed} events (syncar's seqs ${frame.first} to ${frame.last}) will not come`
        : 'events may have been missed, how many is not known';
      this.options.warn('resume_gap', `this app's resume could not be served whole: ${missed}: ${frame.message}`);
      return;
    }
    if (typeof frame.id === 'string') {
      this._settle(frame.id);
      this.emit('refused', frame);
      return;
    }
    this.options.warn(`error_${frame.code}`, `syncar answered ${frame.code}: ${frame.message}`);
  }

  /** Held publishes this daemon would refuse as too large: refused here instead of sent. */
  _dropTooLarge() {
    const limit = this.maxFrameBytes;
    for (const entry of this._held.remove((held) => held.bytes - 1 > limit)) {
      this.emit('refused', { id: entry.id, code: 'frame_too_large', message: `the event is ${entry.bytes - 1} bytes; ` +
        `syncar takes at most ${limit} (its --max-frame-bytes); it was held while syncar was unreachable` });
    }
  }

  _welcome(frame) {
    clearTimeout(this._handshakeTimer);
    if (frame.epoch !== this._epoch) {
      this._epoch = typeof frame.epoch === 'string' ? frame.epoch : null;
      this._seq = typeof frame.seq === 'number' ? frame.seq : 0;
    }
    this.instance = frame.instance ?? null;
    this.broker = frame.broker === 'up' ? 'up' : 'down';
    this.daemonMaxFrameBytes = Number.isSafeInteger(frame.max_frame_bytes) ? frame.max_frame_bytes : null;
    this.barriers = frame.barriers === true; // a daemon older than barriers acknowledges each publish
    if (this._backoff !== null) {
      this._backoff.reset();
    }
    this._dropTooLarge();
    const socket = this._socket;
    // What was written to a previous connection and never acknowledged goes first, in publish order;
    // the daemon may not have read it before it went away.
    for (const entry of this._held.unacknowledged()) {
      socket.write(entry.line);
      this._written(entry);
    }
    this.connected = true;
    this._flush();
    this._barrierDue();
    const first = !this._everConnected;
    this._everConnected = true;
    this.emit('connect', { ...frame, first });
  }
}

module.exports = { Connection, Published };
