-- The plainest runaway.
while true do end
