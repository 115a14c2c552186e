'use strict';

// A small HTTP front for the example, with nothing but node:http: REST for `messages`, and
// GET /events, a Server-Sent Events stream of every service event this instance sees (its own,
// and those of the other instances, which arrive through syncar).

const http = require('node:http');
const { isRemote } = require('@syncar/feathers');

const EVENTS = ['created', 'patched', 'removed', 'typing'];
const MAX_BODY = 64 * 1024;

function readJson(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => {
      body += chunk;
      if (body.length > MAX_BODY) {
        reject(Object.assign(new Error('body too large'), { code: 413 }));
        req.destroy();
      }
    });
    req.on('end', () => {
      try {
        resolve(body ? JSON.parse(body) : {});
      } catch {
        reject(Object.assign(new Error('body is not JSON'), { code: 400 }));
      }
    });
    req.on('error', reject);
  });
}

function createServer(app) {
  const streams = new Set();
  const messages = app.service('messages');
  for (const event of EVENTS) {
    messages.on(event, (data, context) => {
      const line = `data: ${JSON.stringify({
        event,
        path: 'messages',
        data,
        remote: isRemote(context),
        origin: context && context.syncar ? context.syncar.origin : null,
        worker: process.pid,
      })}\n\n`;
      for (const res of streams) {
        res.write(line);
      }
    });
  }

  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://localhost');
    const [, resource, id] = url.pathname.split('/');
    const send = (status, body) => {
      res.writeHead(status, { 'content-type': 'application/json', 'x-worker': String(process.pid) });
      res.end(JSON.stringify(body));
    };
    try {
      if (req.method === 'GET' && resource === 'events') {
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', 'x-worker': String(process.pid) });
        res.write(`data: ${JSON.stringify({ event: 'hello', worker: process.pid, syncar: app.sync.instance })}\n\n`);
        streams.add(res);
        req.on('close', () => streams.delete(res));
        return;
      }
      if (resource === 'typing' && req.method === 'POST') {
        messages.emit('typing', { ...(await readJson(req)), worker: process.pid });
        return send(202, { ok: true });
      }
      if (resource !== 'messages') {
        return send(404, { error: 'try /messages or /events' });
      }
      const key = id === undefined || id === '' ? null : Number(id);
      const params = { provider: 'rest', query: Object.fromEntries(url.searchParams) };
      if (req.method === 'GET') {
        return send(200, key === null ? await messages.find(params) : await messages.get(key, params));
      }
      if (req.method === 'POST' && key === null) {
        return send(201, await messages.create(await readJson(req), params));
      }
      if (req.method === 'PATCH' && key !== null) {
        return send(200, await messages.patch(key, await readJson(req), params));
      }
      if (req.method === 'DELETE' && key !== null) {
        return send(200, await messages.remove(key, params));
      }
      return send(405, { error: `${req.method} not allowed here` });
    } catch (err) {
      return send(err.code >= 400 && err.code < 600 ? err.code : 500, { error: err.message });
    }
  });
  server.closeStreams = () => {
    for (const res of streams) {
      res.end();
    }
  };
  return server;
}

module.exports = { createServer };
