import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;

/**
 * A streaming server for weir check's tests (never for use), run as a single source file:
 * {@code java [-Xmx512m] Server.java PORT MODE [RATE]} (127.0.0.1 only).
 *
 * <p>Each request gets an endless event stream, a thread per client.
 *
 * <ul>
 *   <li>{@code bounded}: the events are written with blocking writes, RATE bytes per second
 *       (as fast as the client reads without RATE): a slow client holds its writer back and
 *       memory stays flat.
 *   <li>{@code unbounded}: a producer thread per client adds RATE bytes per second of events
 *       to a queue that nothing bounds, and a writer drains it as fast as the client reads:
 *       memory grows at the producers' rate, until a heap cap (-Xmx) stops it, producers
 *       dying of OutOfMemoryError.
 * </ul>
 *
 * <p>Client sockets get a 64 KiB send buffer, so what a slow client does not take waits in
 * the heap rather than in the kernel.
 */
public class Server {
    private static final byte[] HEAD =
            ("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
                    .getBytes(StandardCharsets.US_ASCII);
    private static final int EVENT = 4096;
    private static final int BATCH = 64 * 1024;
    private static final int MAX_HEAD = 64 * 1024;

    public static void main(String[] args) throws IOException {
        if (args.length < 2 || !(args[1].equals("bounded") || args[1].equals("unbounded"))) {
            System.err.println("usage: java Server.java PORT bounded|unbounded [RATE]");
            System.exit(2);
        }
        int port = Integer.parseInt(args[0]);
        boolean bounded = args[1].equals("bounded");
        long rate = args.length > 2 ? Long.parseLong(args[2]) : 0;
        if (!bounded && rate <= 0) {
            System.err.println("unbounded needs a RATE in bytes per second");
            System.exit(2);
        }
        try (ServerSocket listener = new ServerSocket()) {
            listener.setReuseAddress(true);
            listener.bind(new InetSocketAddress(InetAddress.getLoopbackAddress(), port), 1024);
            System.err.println("listening on " + port + " (" + args[1] + ")");
            while (true) {
                Socket client = listener.accept();
                Thread thread = new Thread(() -> serve(client, bounded, rate));
                thread.setDaemon(true);
                thread.start();
            }
        }
    }

    private static byte[] event(int size) {
        byte[] event = new byte[size];
        Arrays.fill(event, (byte) 'x');
        byte[] prefix = "data: ".getBytes(StandardCharsets.US_ASCII);
        System.arraycopy(prefix, 0, event, 0, prefix.length);
        event[size - 2] = '\n';
        event[size - 1] = '\n';
        return event;
    }

    private static boolean readHead(InputStream in) throws IOException {
        int matched = 0;
        for (int read = 0; read < MAX_HEAD; read++) {
            int b = in.read();
            if (b < 0) {
                return false;
            }
            boolean expected = (matched % 2 == 0) ? b == '\r' : b == '\n';
            matched = expected ? matched + 1 : (b == '\r' ? 1 : 0);
            if (matched == 4) {
                return true;
            }
        }
        return false;
    }

    private static void serve(Socket client, boolean bounded, long rate) {
        try (client) {
            client.setSendBufferSize(64 * 1024);
            if (!readHead(client.getInputStream())) {
                return;
            }
            OutputStream out = client.getOutputStream();
            out.write(HEAD);
            if (bounded) {
                byte[] event = event(EVENT);
                long pause = rate > 0 ? EVENT * 1_000_000_000L / rate : 0;
                while (true) {
                    out.write(event);
                    pace(pause);
                }
            }
            BlockingQueue<byte[]> queue = new LinkedBlockingQueue<>();
            Thread producer = new Thread(() -> produce(queue, rate, client));
            producer.setDaemon(true);
            producer.start();
            while (true) {
                out.write(queue.take());
            }
        } catch (IOException e) {
            // The client went away: its stream ends here.
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** The bug under test: events are queued whether or not the client takes them. */
    private static void produce(BlockingQueue<byte[]> queue, long rate, Socket client) {
        long pause = BATCH * 1_000_000_000L / rate;
        while (!client.isClosed()) {
            byte[] batch = new byte[BATCH];
            Arrays.fill(batch, (byte) 'x');
            queue.add(batch);
            pace(pause);
        }
    }

    private static void pace(long nanos) {
        if (nanos <= 0) {
            return;
        }
        try {
            Thread.sleep(nanos / 1_000_000, (int) (nanos % 1_000_000));
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
