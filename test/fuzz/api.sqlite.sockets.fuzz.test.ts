/** The socket fuzz tests (test/fuzz/api-fuzz.ts) on the sqlite store. */
import { fuzzSuite } from "./api-fuzz.ts";

fuzzSuite("sqlite", "sockets");
