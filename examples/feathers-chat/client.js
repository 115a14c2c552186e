'use strict';

// The chat in a terminal, with the same Feathers client as the page (over socket.io, WebSocket only):
//
//   node client.js [URL] [NAME]      # URL defaults to http://127.0.0.1:3030
//
// Prints one JSON line per message created on any instance; each line typed is sent as a message.
// The end of its input does not stop it (Ctrl-C does), so it can also only watch.

const readline = require('node:readline');
const io = require('socket.io-client');
const { feathers, socketio } = require('@feathersjs/client');

const [url = 'http://127.0.0.1:3030', name = 'terminal'] = process.argv.slice(2);
const socket = io(url, { transports: ['websocket'], upgrade: false });
const client = feathers().configure(socketio(socket));
const messages = client.service('messages');

const print = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
socket.on('connect', () => print({ connected: url }));
socket.on('disconnect', (reason) => print({ disconnected: reason }));
socket.on('connect_error', (err) => console.error(`cannot connect to ${url}: ${err.message} (retrying)`));
messages.on('created', (message) => print({ event: 'created', data: message }));

// One create at a time, so messages typed in order are created (and reach everyone) in that order.
let sending = Promise.resolve();
readline.createInterface({ input: process.stdin }).on('line', (text) => {
  sending = sending.then(() => messages.create({ name, text })).catch((err) => {
    console.error(`not sent: ${err.message}`);
  });
});
