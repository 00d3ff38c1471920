// Preloaded into every node process of the devnet (NODE_OPTIONS=--require): binds that name no
// host, or a wildcard one, go to 127.0.0.1 instead, because EthereumJS hard-codes 0.0.0.0 for
// RLPx and discovery and the harness must stay on loopback. Also polyfills
// Promise.withResolvers (Node < 22), which a transitive dependency of Lodestar calls.
'use strict';
const net = require('net');
const dgram = require('dgram');
const LOOPBACK = '127.0.0.1';
const isWildcard = (h) => h == null || h === '' || h === '0.0.0.0' || h === '::' || h === '::0';

// Rewrites the host of a listen/bind argument list in place: (options) or (port, [host], ...).
function pinHost(args, key) {
  const first = args[0];
  if (first && typeof first === 'object' && !Array.isArray(first)) {
    if (first.path === undefined && isWildcard(first[key])) args[0] = { ...first, [key]: LOOPBACK };
  } else if (typeof args[1] === 'string') {
    if (isWildcard(args[1])) args[1] = LOOPBACK;
  } else if (typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first))) {
    args.splice(1, 0, LOOPBACK);
  }
  return args;
}
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) { return listen.apply(this, pinHost(args, 'host')); };
const bind = dgram.Socket.prototype.bind;
dgram.Socket.prototype.bind = function (...args) {
  if (args.length === 0 || typeof args[0] === 'function') args.unshift(0);
  return bind.apply(this, pinHost(args, 'address'));
};
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function () {
    let resolve, reject;
    const promise = new this((a, b) => { resolve = a; reject = b; });
    return { promise, resolve, reject };
  };
}
