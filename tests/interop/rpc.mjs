// Small JSON-RPC client for the harness (no python or curl needed): one call, prints one line.
//   node rpc.mjs PORT blocknum            -> eth_blockNumber as a decimal, or -1
//   node rpc.mjs PORT hash N|latest       -> that block's hash, or nothing
//   node rpc.mjs PORT head                -> "#NUMBER HASH txs=N" of the latest block, or nothing
//   node rpc.mjs PORT balance ADDRESS     -> eth_getBalance at latest (JSON), or nothing
//   node rpc.mjs PORT sendtx COUNT        -> sends COUNT signed EIP-1559 value transfers to 0xdEaD
// Every call is bounded by a 3 s timeout; failures print the "nothing" answer and exit 0.
const [port, what, arg] = process.argv.slice(2);
const url = `http://127.0.0.1:${port}`;
async function rpc(method, params) {
  const r = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }),
    signal: AbortSignal.timeout(3000),
  });
  return (await r.json()).result;
}
const block = (n) => rpc('eth_getBlockByNumber', [n === 'latest' ? n : '0x' + Number(n).toString(16), false]);
async function sendTxs(count) {
  // Hardhat's dev key #0, funded in genesis.json. @ethereumjs/tx comes with the EL install.
  const { createFeeMarket1559Tx } = await import('@ethereumjs/tx');
  const { Mainnet, createCustomCommon } = await import('@ethereumjs/common');
  const { hexToBytes, bytesToHex } = await import('@ethereumjs/util');
  const key = hexToBytes('0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80');
  const common = createCustomCommon({ chainId: 1337 }, Mainnet, { hardfork: 'shanghai' });
  let nonce = BigInt((await rpc('eth_getTransactionCount', ['0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266', 'pending'])) ?? '0x0');
  const out = [];
  for (let i = 0; i < count; i++) {
    const tx = createFeeMarket1559Tx({
      nonce: nonce++, maxFeePerGas: 20_000_000_000n, maxPriorityFeePerGas: 1_000_000_000n, gasLimit: 21000n,
      to: '0x000000000000000000000000000000000000dEaD', value: 1000n + BigInt(i),
    }, { common }).sign(key);
    out.push(await rpc('eth_sendRawTransaction', [bytesToHex(tx.serialize())]));
  }
  return out.join(' ');
}
try {
  switch (what) {
    case 'blocknum': { const n = await rpc('eth_blockNumber', []); console.log(n ? parseInt(n, 16) : -1); break; }
    case 'hash': { const b = await block(arg); if (b) console.log(b.hash); break; }
    case 'head': { const b = await block('latest'); if (b) console.log(`#${parseInt(b.number, 16)} ${b.hash} txs=${b.transactions.length}`); break; }
    case 'balance': { const v = await rpc('eth_getBalance', [arg, 'latest']); if (v) console.log(JSON.stringify(v)); break; }
    case 'sendtx': console.log(await sendTxs(Number(arg))); break;
    default: console.error(`rpc.mjs: unknown command ${what}`); process.exit(2);
  }
} catch (e) {
  if (what === 'blocknum') console.log(-1);
  else if (what === 'sendtx') console.log(`error: ${e.message}`);
}
