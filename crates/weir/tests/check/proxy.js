// A reverse proxy for weir check's tests (never for use), good or deliberately broken.
//
// Each request is forwarded to the app behind it. `good` pipes the app's body to the
// client: when the client's socket is full, the app's socket is paused, and memory stays
// bounded. `buffering` writes every chunk the app sends without waiting for 'drain' (the
// return value of res.write ignored): what a slow client does not take piles up in
// Node's memory, however well the app behind it behaves. The bug weir check names when
// it measures the chain.
//
// Usage: node proxy.js PORT APP_PORT good|buffering   (127.0.0.1 only)
'use strict';
const http = require('http');

const [port, appPort] = process.argv.slice(2, 4).map(Number);
const mode = process.argv[4];
if (!port || !appPort || !['good', 'buffering'].includes(mode)) {
  console.error('usage: node proxy.js PORT APP_PORT good|buffering');
  process.exit(2);
}

http
  .createServer((req, res) => {
    const upstream = http.request(
      { host: '127.0.0.1', port: appPort, path: req.url, method: req.method, headers: req.headers },
      (app) => {
        res.writeHead(app.statusCode, app.headers);
        if (mode === 'good') {
          app.pipe(res);
        } else {
          app.on('data', (chunk) => res.write(chunk)); // the bug: no backpressure
          app.on('end', () => res.end());
        }
      },
    );
    upstream.on('error', () => res.destroy());
    res.on('close', () => upstream.destroy());
    req.pipe(upstream);
  })
  .listen(port, '127.0.0.1', () => console.error(`listening on ${port} (${mode}), app on ${appPort}`));
