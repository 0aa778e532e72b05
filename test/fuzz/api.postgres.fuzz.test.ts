/** The HTTP and socket fuzz suite (test/fuzz/api-fuzz.ts) on the postgres store. */
import { fuzzSuite } from "./api-fuzz.ts";

fuzzSuite("postgres");
