'use strict';

// Unit tests without a daemon: how frames from syncar are cut out of the socket's bytes (lib/lines.js).

const test = require('node:test');
const assert = require('node:assert/strict');
const { LineSplitter } = require('../lib/lines');

/** A splitter with a `maxBytes` limit that records its lines and how many oversized lines it reported. */
function splitter(maxBytes) {
  const seen = { lines: [], oversized: 0 };
  seen.splitter = new LineSplitter(maxBytes, (line) => seen.lines.push(line), () => { seen.oversized += 1; });
  return seen;
}

test('the limit is in bytes of UTF-8: a line of exactly maxBytes passes, one byte more is dropped', () => {
  const seen = splitter(6);
  seen.splitter.feed(Buffer.from('€€\n€€é\nabcdef\nabcdefg\nok\n'));
  assert.deepEqual(seen.lines, ['€€', 'abcdef', 'ok']);
  assert.equal(seen.oversized, 2);
});

test('a character split between two chunks arrives intact', () => {
  const seen = splitter(100);
  const bytes = Buffer.from('{"text":"€é"}\n');
  for (let cut = 1; cut < bytes.length; cut += 1) {
    seen.splitter.feed(bytes.subarray(0, cut));
    seen.splitter.feed(bytes.subarray(cut));
  }
  assert.equal(seen.lines.length, bytes.length - 1);
  assert.ok(seen.lines.every((line) => line === '{"text":"€é"}'));
  assert.equal(seen.oversized, 0);
});

test('a line over the limit across many chunks is reported once, and the line after it still counts', () => {
  const seen = splitter(8);
  for (const chunk of ['€€', '€€', '€€', '€€', 'x\nnext', '\n']) {
    seen.splitter.feed(Buffer.from(chunk));
  }
  assert.deepEqual(seen.lines, ['next']);
  assert.equal(seen.oversized, 1);
});

test('a line split between reads into one reused buffer arrives intact', () => {
  // The connection reads the socket into one buffer (lib/connection.js): the next read overwrites the last.
  const seen = splitter(100);
  const buffer = Buffer.alloc(16);
  for (const part of ['{"a":1}\n{"b"', ':2}\n']) {
    const bytes = buffer.write(part);
    seen.splitter.feed(buffer.subarray(0, bytes));
    buffer.fill('z');
  }
  assert.deepEqual(seen.lines, ['{"a":1}', '{"b":2}']);
});
