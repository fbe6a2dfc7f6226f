package marketpulse.store;

import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.backend.h2.H2Backend;
import de.bwaldvogel.mongo.bson.Document;
import io.netty.channel.Channel;
import java.io.IOException;
import java.net.BindException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.security.KeyFactory;
import java.security.PrivateKey;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.security.cert.X509Certificate;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import org.h2.mvstore.MVStore;
import org.h2.mvstore.MVStoreException;

/**
 * mongo-java-server with the H2 (MVStore) backend, as marketpulse's embedded store.
 *
 * <p>Why a launcher of our own rather than the library's own main class:
 *
 * <ul>
 *   <li>pymongo 4.20 refuses the wire versions mongo-java-server declares (8 at most; it
 *       needs 9 or more), so this server declares MongoDB 6.0 (wire version 17). Nothing
 *       in our code uses a feature that needs the real 6.0.
 *   <li>MVStore commits in the background about once a second, so a kill -9 could lose
 *       writes that were already acknowledged. Every command that changed something is
 *       committed before its reply is sent: what was acknowledged survives a crash of
 *       this process.
 *   <li>{@code hello} (the modern handshake) is answered like {@code isMaster}.
 *   <li>Start-up failures (busy port, locked or corrupt data file) are one line on stderr
 *       and exit code 2, as every marketpulse process reports them.
 * </ul>
 *
 * <p>Usage: {@code EmbeddedMongo --port N [--host 127.0.0.1] [--data DIR | --memory]
 * [--cache-mb 256] [--tls-cert CERT.pem --tls-key KEY.pem]}. With the TLS options it accepts TLS connections
 * only, presenting the certificate chain in CERT.pem (PEM, the server's first) and the
 * PKCS#8 key in KEY.pem ({@code -----BEGIN PRIVATE KEY-----}, RSA or EC). Prints
 * {@code embedded-mongo ready on HOST:PORT} once it accepts connections.
 */
public final class EmbeddedMongo {

  static final int EXIT_USAGE = 2;

  /**
   * MVStore's page cache, in MB, unless {@code --cache-mb} says otherwise. H2's own default
   * (16 MB) holds about 40,000 markets: past that every pass over a collection reads pages
   * back from the file, and a {@code $group} over 200,000 markets took 4 s instead of the
   * ~0.1 s it takes from memory (measured 2026-12-02). 256 MB keeps a catalogue of a few
   * hundred thousand markets plus the runs of a month in memory.
   */
  static final int DEFAULT_CACHE_MB = 256;

  /** The version we declare: MongoDB 6.0, wire version 17. */
  static final MongoVersion DECLARED_VERSION =
      new MongoVersion() {
        @Override
        public List<Integer> getVersionArray() {
          return List.of(6, 0, 0);
        }

        @Override
        public int getWireVersion() {
          return 17;
        }
      };

  /** The H2 backend, committing every change before the command's reply goes out. */
  static final class DurableH2Backend extends H2Backend {
    private final MVStore store;

    DurableH2Backend(MVStore store) {
      super(store);
      this.store = store;
    }

    @Override
    public Document handleCommand(Channel channel, String database, String command, Document query) {
      String name = "hello".equalsIgnoreCase(command) ? "isMaster" : command;
      Document reply = super.handleCommand(channel, database, name, query);
      if (!store.isClosed() && store.hasUnsavedChanges()) {
        store.commit();
      }
      return reply;
    }
  }

  private EmbeddedMongo() {}

  public static void main(String[] args) {
    String host = "127.0.0.1";
    int port = -1;
    Path data = null;
    boolean memory = false;
    int cacheMb = DEFAULT_CACHE_MB;
    Path tlsCert = null;
    Path tlsKey = null;
    for (int i = 0; i < args.length; i++) {
      switch (args[i]) {
        case "--host" -> host = value(args, ++i, "--host");
        case "--port" -> port = parsePort(value(args, ++i, "--port"));
        case "--data" -> data = Path.of(value(args, ++i, "--data"));
        case "--memory" -> memory = true;
        case "--cache-mb" -> cacheMb = parseCacheMb(value(args, ++i, "--cache-mb"));
        case "--tls-cert" -> tlsCert = Path.of(value(args, ++i, "--tls-cert"));
        case "--tls-key" -> tlsKey = Path.of(value(args, ++i, "--tls-key"));
        default -> fail("unknown argument " + args[i] + "; usage: --port N [--host H] [--data DIR | --memory] [--cache-mb N] [--tls-cert PEM --tls-key PEM]");
      }
    }
    if (port < 0) {
      fail("--port is required (0 picks a free port); usage: --port N [--host H] [--data DIR | --memory]");
    }
    if (data == null && !memory) {
      fail("give --data DIR (kept on disk) or --memory (lost at exit)");
    }
    if ((tlsCert == null) != (tlsKey == null)) {
      fail("give --tls-cert and --tls-key together");
    }
    PrivateKey key = tlsKey == null ? null : readKey(tlsKey);
    X509Certificate[] chain = tlsCert == null ? null : readCertificates(tlsCert);
    MVStore store = memory ? new MVStore.Builder().cacheSize(cacheMb).open() : openStore(data, cacheMb);
    DurableH2Backend backend = new DurableH2Backend(store);
    backend.version(DECLARED_VERSION);
    MongoServer server = new MongoServer(backend);
    if (key != null) {
      server.enableSsl(key, null, chain);
    }
    try {
      server.bind(host, port);
    } catch (Exception exc) { // netty rethrows the checked BindException undeclared
      backend.close();
      if (rootCause(exc) instanceof BindException) {
        fail("cannot listen on " + host + ":" + port + ": the port is in use; stop what holds it or choose another port");
      }
      fail("cannot listen on " + host + ":" + port + ": " + rootCause(exc));
    }
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  server.shutdownNow();
                  backend.close(); // commits and closes the data file
                },
                "embedded-mongo-shutdown"));
    System.out.println("embedded-mongo ready on " + host + ":" + server.getLocalAddress().getPort());
    System.out.flush();
  }

  static MVStore openStore(Path folder, int cacheMb) {
    if (Files.exists(folder) && !Files.isDirectory(folder)) {
      fail("the data folder " + folder + " is a file, not a folder; give --data a folder");
    }
    try {
      Files.createDirectories(folder);
    } catch (IOException exc) {
      fail("cannot create the data folder " + folder + " (" + exc.getClass().getSimpleName() + ": " + exc.getMessage() + ")");
    }
    Path file = folder.resolve("marketpulse.mv.db");
    try {
      return new MVStore.Builder().fileName(file.toString()).cacheSize(cacheMb).open();
    } catch (MVStoreException exc) {
      String message = String.valueOf(exc.getMessage());
      if (message.contains("locked")) {
        fail("the data file " + file + " is locked: another embedded store is using it; stop that one or choose another folder");
      }
      fail("the data file " + file + " cannot be read (" + firstLine(message) + "); move it away to start empty, or restore it from a copy");
    } catch (RuntimeException exc) {
      fail("the data file " + file + " cannot be opened (" + firstLine(String.valueOf(exc)) + "); move it away to start empty");
    }
    throw new AssertionError("unreachable");
  }

  static PrivateKey readKey(Path file) {
    String pem = readText(file, "--tls-key");
    String begin = "-----BEGIN PRIVATE KEY-----";
    int start = pem.indexOf(begin);
    int end = pem.indexOf("-----END PRIVATE KEY-----");
    if (start < 0 || end < start) {
      fail("--tls-key " + file + " holds no PKCS#8 key (-----BEGIN PRIVATE KEY-----); convert it with openssl pkcs8 -topk8 -nocrypt");
    }
    byte[] der = Base64.getMimeDecoder().decode(pem.substring(start + begin.length(), end));
    for (String algorithm : List.of("RSA", "EC", "Ed25519")) {
      try {
        return KeyFactory.getInstance(algorithm).generatePrivate(new PKCS8EncodedKeySpec(der));
      } catch (GeneralSecurityException exc) {
        // not this algorithm: try the next
      }
    }
    fail("--tls-key " + file + ": the key is neither RSA, EC nor Ed25519");
    throw new AssertionError("unreachable");
  }

  static X509Certificate[] readCertificates(Path file) {
    List<X509Certificate> chain = new ArrayList<>();
    try (InputStream in = Files.newInputStream(file)) {
      for (Certificate certificate : CertificateFactory.getInstance("X.509").generateCertificates(in)) {
        chain.add((X509Certificate) certificate);
      }
    } catch (IOException | GeneralSecurityException exc) {
      fail("--tls-cert " + file + " cannot be read as PEM certificates (" + exc.getClass().getSimpleName() + ")");
    }
    if (chain.isEmpty()) {
      fail("--tls-cert " + file + " holds no certificate");
    }
    return chain.toArray(new X509Certificate[0]);
  }

  static String readText(Path file, String flag) {
    try {
      return Files.readString(file, StandardCharsets.US_ASCII);
    } catch (IOException exc) {
      fail(flag + " " + file + " cannot be read (" + exc.getClass().getSimpleName() + ")");
      throw new AssertionError("unreachable");
    }
  }

  static Throwable rootCause(Throwable exc) {
    Throwable cause = exc;
    while (cause.getCause() != null && cause.getCause() != cause) {
      cause = cause.getCause();
    }
    return cause;
  }

  static String firstLine(String text) {
    int end = text.indexOf('\n');
    return end < 0 ? text : text.substring(0, end);
  }

  static String value(String[] args, int index, String flag) {
    if (index >= args.length) {
      fail(flag + " needs a value");
    }
    return args[index];
  }

  static int parsePort(String text) {
    try {
      int port = Integer.parseInt(text);
      if (port < 0 || port > 65535) {
        fail("--port must be between 0 and 65535, got " + text);
      }
      return port;
    } catch (NumberFormatException exc) {
      fail("--port must be a number, got " + text);
      return -1;
    }
  }

  static int parseCacheMb(String text) {
    try {
      int mb = Integer.parseInt(text);
      if (mb < 1) {
        fail("--cache-mb must be 1 or more, got " + text);
      }
      return mb;
    } catch (NumberFormatException exc) {
      fail("--cache-mb must be a whole number of MB, got " + text);
      return -1;
    }
  }

  static void fail(String message) {
    System.err.println("embedded-mongo: " + message);
    System.exit(EXIT_USAGE);
  }
}
