-- wrk script: send at a fixed offered rate instead of flat out (wrk2 is not packaged in Debian).
--
--   wrk -t2 -c16 -d10s --latency -s paced.lua URL -- RATE THREADS
--
-- wrk calls delay() each time a connection is ready to send its next request and waits
-- that many milliseconds (an integer: its timers have 1 ms resolution) before sending.
-- Each thread hands out send slots on its own schedule, RATE/THREADS per second, one slot
-- per call: a connection is told to wait until its slot is due. A thread that fell behind
-- (its timers fire late, every connection was waiting on a slow server) catches up on at
-- most CATCHUP_MS of missed slots, sent at once, and drops older ones: the rate reached is
-- at most RATE and falls short of it only when the server (or the machine) cannot keep up
-- for longer than that; the shortfall is what the benchmark reports. Latency is wrk's own: from the write of a request to the
-- end of its response, so the wait for a slot is not in it.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } paced_timespec;
int clock_gettime(int clk, paced_timespec *ts);
]]
local ts = ffi.new("paced_timespec")

local function now_ms()
   ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
   return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local CATCHUP_MS = 20
local interval_ms = nil
local next_slot = nil

function init(args)
   local rate, threads = tonumber(args[1]), tonumber(args[2] or 1)
   if not rate or rate <= 0 or not threads or threads <= 0 then
      error("paced.lua: usage: -- RATE THREADS (RATE > 0 requests per second over all threads)")
   end
   interval_ms = 1000.0 * threads / rate
end

function delay()
   local now = now_ms()
   if next_slot == nil or next_slot < now - CATCHUP_MS then
      next_slot = now - (next_slot and CATCHUP_MS or 0)
   end
   local slot = next_slot
   next_slot = next_slot + interval_ms
   local wait = slot - now
   -- round to the timer's 1 ms: early by under half a ms, never a slot missed
   return math.floor(wait + 0.5)
end

function done(summary, latency, requests)
   io.write(string.format("paced: requests=%d p50_us=%d p99_us=%d max_us=%d\n", summary.requests,
      latency:percentile(50), latency:percentile(99), latency.max))
end
