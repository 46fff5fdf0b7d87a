// A deliberately broken reverse proxy, for weir check's tests (never for use).
//
// Each request is forwarded to the app behind it, and every chunk the app sends is written
// to the client without waiting for 'drain' (the return value of res.write is ignored):
// what a slow client does not take piles up in Node's memory, however well the app behind
// it behaves. The bug weir check names when it measures the chain.
//
// Usage: node buffering_proxy.js PORT APP_PORT   (127.0.0.1 only)
'use strict';
const http = require('http');

const [port, appPort] = process.argv.slice(2).map(Number);
if (!port || !appPort) {
  console.error('usage: node buffering_proxy.js PORT APP_PORT');
  process.exit(2);
}

http
  .createServer((req, res) => {
    const upstream = http.request(
      { host: '127.0.0.1', port: appPort, path: req.url, method: req.method, headers: req.headers },
      (app) => {
        res.writeHead(app.statusCode, app.headers);
        app.on('data', (chunk) => res.write(chunk)); // the bug: no backpressure
        app.on('end', () => res.end());
      },
    );
    upstream.on('error', () => res.destroy());
    res.on('close', () => upstream.destroy());
    req.pipe(upstream);
  })
  .listen(port, '127.0.0.1', () => console.error(`listening on ${port}, app on ${appPort}`));
