-- Remove the budget hook, then run forever.
debug.sethook()
while true do end
