'use strict';

/**
 * W3C trace context between the app's OpenTelemetry and syncar (docs/protocol.md#trace-context).
 *
 * `@opentelemetry/api` is an optional peer dependency: it is looked for once, at the first event, and without it
 * (or without an active span) nothing is added to a publish and a received event is emitted as it always was.
 * The publish takes the active span's context; the receiving emit runs in a context whose parent is the
 * publisher's span (remote), so that a span the app starts in a listener joins the publisher's trace.
 */

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

let api; // undefined: not looked for yet; null: not installed

function otel() {
  if (api === undefined) {
    try {
      api = require('@opentelemetry/api');
    } catch {
      api = null;
    }
  }
  return api;
}

/**
 * The publish fields for the active span's context: `,"traceparent":"…"` (and `,"tracestate":"…"`), or '' when there
 * is no OpenTelemetry API or no valid active span.
 */
function traceFields() {
  const opentelemetry = otel();
  if (opentelemetry === null) {
    return '';
  }
  const span = opentelemetry.trace.getSpanContext(opentelemetry.context.active());
  if (span === undefined || !opentelemetry.isSpanContextValid(span)) {
    return '';
  }
  const flags = (span.traceFlags & 0xff).toString(16).padStart(2, '0');
  let fields = `,"traceparent":"00-${span.traceId}-${span.spanId}-${flags}"`;
  const state = span.traceState === undefined ? '' : span.traceState.serialize();
  if (state !== '') {
    fields += `,"tracestate":${JSON.stringify(state)}`;
  }
  return fields;
}

/**
 * Call `emit` in the context an event frame carries (its publisher's span, as a remote parent), when the
 * OpenTelemetry API is installed and the frame has a valid traceparent; else just call it.
 */
function withTraceContext(frame, emit) {
  const traceparent = frame.traceparent;
  if (typeof traceparent !== 'string') {
    return emit();
  }
  const opentelemetry = otel();
  const parts = TRACEPARENT.exec(traceparent);
  if (opentelemetry === null || parts === null) {
    return emit();
  }
  const span = {
    traceId: parts[2],
    spanId: parts[3],
    traceFlags: parseInt(parts[4], 16) & 0x01, // sampled is the only flag defined
    isRemote: true,
  };
  if (typeof frame.tracestate === 'string') {
    span.traceState = opentelemetry.createTraceState(frame.tracestate);
  }
  if (!opentelemetry.isSpanContextValid(span)) {
    return emit();
  }
  const context = opentelemetry.trace.setSpanContext(opentelemetry.context.active(), span);
  return opentelemetry.context.with(context, emit);
}

module.exports = { traceFields, withTraceContext };
