// Types for @syncar/feathers (written by hand; the package is plain JavaScript).

import { EventEmitter } from 'node:events';

/** Which events to receive: shell-style patterns (`*`, `?`) on the service path and the event name. */
interface SubscribePattern {
  path?: string;
  event?: string;
}

interface ReconnectOptions {
  /** First step of the back-off, in ms (default 50): each failure doubles it; a delay is drawn from its upper half. */
  minDelay?: number;
  /** Longest delay between two attempts, in ms (default 5000). */
  maxDelay?: number;
}

/** What the plugin logs: warnings only, rate-limited per kind. */
interface SyncarLogger {
  warn(message: string): void;
}

interface SyncarOptions {
  /** Path of syncar's unix socket. Default: $SYNCAR_SOCKET, else where `syncar run` puts it. */
  socket?: string;
  /** A name for this app in syncar's logs. Default `feathers-<pid>`. */
  name?: string;
  /**
   * This app's identity on syncar, and a secret: the daemon scopes the ids of the events it publishes with it. 1 to
   * 256 characters. Default: 128 random bits, a new app per process. Give the same one to keep an app's scope across
   * restarts, one per process connected at a time (a connection that resumes is not replayed the events of its own
   * clientId, so workers sharing one would miss each other's); keep it out of logs and code.
   */
  clientId?: string;
  /**
   * What to receive. Default: every event. A string is a path pattern; `false` or `[]` receives
   * nothing (publish-only).
   */
  subscribe?: boolean | string | SubscribePattern | Array<string | SubscribePattern>;
  /** Reconnect with back-off (default), or `false` to give up when the connection is lost. */
  reconnect?: boolean | ReconnectOptions;
  /**
   * As in feathers-sync: `{ event, path, data, context }` to JSON text, or to binary (a Buffer or Uint8Array:
   * BSON, MessagePack), carried as it is. Default JSON.stringify.
   */
  serialize?: (payload: SyncPayload) => string | Uint8Array;
  /**
   * As in feathers-sync: an event back to an object: the JSON text of its frame (a string), or the bytes a binary
   * serialize made (a Buffer). Default JSON.parse.
   */
  deserialize?: (data: any) => any;
  /** Publishes held while syncar is unreachable or has not acknowledged them (default 10000). */
  maxPending?: number;
  /** Bytes of publishes held that way (default 32 MiB). */
  maxPendingBytes?: number;
  /** Largest event sent, in bytes of its frame; keep it at most the daemon's --max-frame-bytes (default 1 MiB). */
  maxFrameBytes?: number;
  /** Largest frame accepted from syncar, in bytes of UTF-8 (default 16 MiB). */
  maxReceiveBytes?: number;
  /** Unsent socket bytes above which publishes are held instead of written (default 8 MiB). */
  writeBufferBytes?: number;
  /** How long app.sync.close() waits for syncar to acknowledge held publishes, in ms (default 2000). */
  closeTimeout?: number;
  /** Where warnings go (default console); null to stay silent (the `warning` event still fires). */
  logger?: SyncarLogger | null;
  /** feathers-sync broker options: accepted and ignored (with a warning); the broker is syncar's setting. */
  uri?: string;
  key?: string;
}

/** What is serialised for each event, exactly as feathers-sync does. */
interface SyncPayload {
  event: string;
  path: string;
  data: any;
  context?: any;
}

/** The mark on the context of an event that came from another app through syncar. */
interface SyncarMark {
  remote: true;
  /** The instance id of the syncar of the app that published it (null from a feathers-sync app). */
  origin: string | null;
  id: string | null;
  seq: number | null;
  /** Publish time in seconds since the epoch, when known. */
  time: number | null;
  /** The W3C trace context the publishing app's span had (syncar codec, or an app of the same syncar). */
  traceparent: string | null;
  tracestate: string | null;
}

interface SyncarWelcome {
  instance: string;
  backend: string;
  broker: 'up' | 'down';
  epoch: string;
  seq: number;
  resumed: boolean;
  /** The longest line this syncar takes (its --max-frame-bytes); larger events are not sent to it. */
  max_frame_bytes: number;
  /** True on the first connection, false on reconnects. */
  first: boolean;
}

interface SyncarWarning {
  code: string;
  message: string;
}

/** Events of another instance that went by on the bus and never reached this syncar (syncar codec only). */
interface SyncarBusGap {
  type: 'gap';
  /** The instance id whose events were missed. */
  origin: string;
  missed: number;
  /** The sequence numbers missed, `first` to `last`, of that instance's `run` (one start of its daemon). */
  first: number;
  last: number;
  run: string;
  /** `lost`: the broker did not deliver them; `restart`: the first events of the instance's new run. */
  reason: 'lost' | 'restart' | string;
}

/** This app's resume could not be served: syncar restarted in broadcast mode, or the app was away too long. */
interface SyncarResumeGap {
  type: 'error';
  code: 'resume_gap';
  message: string;
  /** Where syncar can count them (the app fell behind its replay buffer): how many events this app will not get,
   * the syncar's seqs `first` to `last` (its own publishes and events it would not want among them). */
  missed?: number;
  first?: number;
  last?: number;
}

type SyncarGap = SyncarBusGap | SyncarResumeGap;

interface SyncarStats {
  /** Events handed to syncar (sent, or held to be sent). */
  published: number;
  /** Events received from other apps. */
  received: number;
  /** Events not sent: unserialisable, over maxFrameBytes. */
  skipped: number;
  /** Events not sent: held publishes full, or refused by syncar. */
  dropped: number;
  /** Events syncar said this app will never get: the `missed` of every `gap` (on the bus, and of this app's resumes
   * where syncar counted them). */
  missed: number;
}

/** `app.sync` once configured. */
interface SyncarSync extends EventEmitter {
  readonly type: 'syncar';
  /** Resolves once connected to syncar; rejects only if that can no longer happen. */
  readonly ready: Promise<void>;
  serialize: (payload: SyncPayload) => string | Uint8Array;
  deserialize: (data: any) => any;
  readonly connected: boolean;
  readonly instance: string | null;
  readonly broker: 'up' | 'down' | null;
  /** This app's secret on its syncar: it scopes the ids of the events it publishes. Never share it. */
  readonly clientId: string;
  readonly pending: number;
  readonly stats: SyncarStats;
  /** Waits (up to closeTimeout) for held publishes to be acknowledged, then closes the socket. */
  close(): Promise<void>;

  on(event: 'connect', listener: (welcome: SyncarWelcome) => void): this;
  on(event: 'disconnect', listener: () => void): this;
  on(event: 'status', listener: (status: { broker: 'up' | 'down'; backend: string; outbox: number; stopping?: boolean }) => void): this;
  on(event: 'gap', listener: (gap: SyncarGap) => void): this;
  on(event: 'warning', listener: (warning: SyncarWarning) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
}

/** Anything Feathers-like that `app.configure()` hands to a plugin. */
interface SyncableApplication {
  mixins: any[];
  services: Record<string, any>;
  emit(event: string | symbol, ...args: any[]): boolean;
  [key: string]: any;
}

/** `app.configure(syncar({ socket }))`. */
declare function syncar(options?: SyncarOptions): (app: SyncableApplication) => void;

declare namespace syncar {
  export { syncar, syncar as default };
  export type { SubscribePattern, ReconnectOptions, SyncarLogger, SyncarOptions, SyncPayload, SyncarMark, SyncarWelcome, SyncarWarning, SyncarBusGap, SyncarResumeGap, SyncarGap, SyncarStats, SyncarSync, SyncableApplication };
  /** `context[SYNC] = false` in a hook keeps that call's events on this instance. */
  export const SYNC: unique symbol;
  /** True if the context is that of an event that came from another app through syncar. */
  export function isRemote(context: unknown): context is { syncar: SyncarMark };
  /** The socket path used when none is given. */
  export function defaultSocketPath(env?: Record<string, string | undefined>): string;
  export const DEFAULTS: Readonly<{
    reconnect: Readonly<Required<ReconnectOptions>>;
    maxPending: number;
    maxPendingBytes: number;
    maxFrameBytes: number;
    maxReceiveBytes: number;
    writeBufferBytes: number;
    closeTimeout: number;
  }>;
}

declare module '@feathersjs/feathers' {
  interface Application<Services, Settings> {
    sync: SyncarSync;
  }
  interface HookContext<A, S> {
    /** Set on events that came from another app through syncar. */
    syncar?: SyncarMark;
  }
}

export = syncar;
