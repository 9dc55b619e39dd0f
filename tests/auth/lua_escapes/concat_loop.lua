-- Copy a large string over and over: each copy is C work between two hooks.
local s = ("x"):rep(4000000)
while true do local t = s .. "y" end
