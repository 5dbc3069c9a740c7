package io.flowstate.flink.checks;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;

import io.flowstate.flink.FlowstateException;
import io.flowstate.flink.FlowstateNative;

/**
 * Every failure of the native library reaches Java as a {@link FlowstateException} naming its
 * cause, and the JVM lives on: bad options, a closed handle, a bad state kind, a foreign key
 * group, a restore from an empty directory and from a checkpoint with a damaged file. Exits 0 and
 * prints {@code OK NativeErrors} when every case holds, 1 naming the first that does not.
 */
public final class NativeErrors {
    private static final List<String> failures = new ArrayList<>();

    private NativeErrors() {}

    interface Call {
        void run() throws Exception;
    }

    private static void expect(String what, String needle, Call call) {
        try {
            call.run();
            failures.add(what + ": no exception");
        } catch (FlowstateException e) {
            if (e.getMessage() == null || !e.getMessage().contains(needle)) {
                failures.add(what + ": message `" + e.getMessage() + "` lacks `" + needle + "`");
            }
        } catch (Throwable t) {
            failures.add(what + ": " + t.getClass().getName() + " instead of FlowstateException: " + t);
        }
    }

    /** A composite key: key group (u16 BE), key length (u8), key, namespace length 0. */
    static byte[] key(int keyGroup, String key) {
        byte[] k = key.getBytes();
        byte[] out = new byte[2 + 1 + k.length + 1];
        out[0] = (byte) (keyGroup >>> 8);
        out[1] = (byte) keyGroup;
        out[2] = (byte) k.length;
        System.arraycopy(k, 0, out, 3, k.length);
        out[3 + k.length] = 0;
        return out;
    }

    public static void main(String[] args) throws Exception {
        Path dir = Files.createTempDirectory("flowstate-native-errors");
        expect("unknown option", "no-such-option",
                () -> FlowstateNative.open(dir.resolve("a").toString(), 128, 0, 127, "no-such-option=1"));
        expect("bad option value", "write-buffer-size",
                () -> FlowstateNative.open(dir.resolve("a").toString(), 128, 0, 127, "write-buffer-size=lots"));
        expect("max parallelism beyond 32768", "40000",
                () -> FlowstateNative.open(dir.resolve("a").toString(), 40000, 0, 1, ""));
        expect("closed handle", "closed", () -> FlowstateNative.get(0, 0, key(1, "k")));

        long h = FlowstateNative.open(dir.resolve("b").toString(), 128, 0, 63, "");
        expect("unknown state kind", "kind 9", () -> FlowstateNative.register(h, "s", 9, -1));
        int state = FlowstateNative.register(h, "s", FlowstateNative.VALUE, -1);
        expect("unknown state id", "7", () -> FlowstateNative.put(h, 7, key(1, "k"), new byte[] {1}));
        expect("key group outside the range", "key group",
                () -> FlowstateNative.put(h, state, key(100, "k"), new byte[] {1}));
        expect("truncated composite key", "key", () -> FlowstateNative.put(h, state, new byte[] {0}, new byte[] {1}));
        expect("restore from an empty directory", "no checkpoint", () -> {
            Path empty = Files.createDirectories(dir.resolve("empty"));
            FlowstateNative.restore(h, new String[] {empty.toString()}, 0, 63);
        });

        // A real checkpoint with one flipped byte in an SST: the restore names the file.
        for (int i = 0; i < 2000; i++) {
            FlowstateNative.put(h, state, key(i % 64, "key-" + i), ("value-" + i).getBytes());
        }
        String listing = FlowstateNative.runSnapshot(FlowstateNative.snapshot(h, 1));
        String[] lines = listing.split("\n");
        Path root = Path.of(lines[0].substring(lines[0].indexOf('\t') + 1));
        Path copy = dir.resolve("copy");
        String sst = null;
        for (int i = 1; i < lines.length; i++) {
            String path = lines[i].split("\t", 3)[2];
            Path target = copy.resolve(path);
            Files.createDirectories(target.getParent());
            Files.copy(root.resolve(path), target);
            if (path.endsWith(".sst")) {
                sst = path;
            }
        }
        if (sst == null) {
            failures.add("the checkpoint lists no SST: " + listing);
        } else {
            Path damaged = copy.resolve(sst);
            byte[] bytes = Files.readAllBytes(damaged);
            bytes[bytes.length / 2] ^= 0x40;
            Files.write(damaged, bytes);
            String name = sst;
            long fresh = FlowstateNative.open(dir.resolve("c").toString(), 128, 0, 63, "");
            expect("restore of a damaged SST", name.substring(name.lastIndexOf('/') + 1),
                    () -> FlowstateNative.restore(fresh, new String[] {copy.toString()}, 0, 63));
            FlowstateNative.close(fresh);
        }
        // The store still works after all of the above.
        byte[] got = FlowstateNative.get(h, state, key(5, "key-5"));
        if (got == null || !new String(got).equals("value-5")) {
            failures.add("the store lost a value after the failed calls");
        }
        FlowstateNative.close(h);
        try (Stream<Path> paths = Files.walk(dir)) {
            paths.sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
        }
        if (!failures.isEmpty()) {
            System.out.println("FAILED NativeErrors:\n  " + String.join("\n  ", failures));
            System.exit(1);
        }
        System.out.println("OK NativeErrors");
    }
}
