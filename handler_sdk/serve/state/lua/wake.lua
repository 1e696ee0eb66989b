-- ARGV: P NOW worker... Wakes these workers got here and cannot use (no take of the worker waiting, a take that
-- filled its slots, a replica shutting down): they are counted on no more, and more idle takers are woken while
-- the queue holds more than those still woken have room for. Returns how many were woken.
for i = 3, #ARGV do asked(ARGV[i]) end
return wake_for_work()
