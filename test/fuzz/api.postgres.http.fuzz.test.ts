/** The HTTP fuzz tests (test/fuzz/api-fuzz.ts) on the postgres store. */
import { fuzzSuite } from "./api-fuzz.ts";

fuzzSuite("postgres", "http");
