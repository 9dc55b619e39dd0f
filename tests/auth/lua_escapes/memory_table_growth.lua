-- Grow a table until memory runs out.
local t = {}
local i = 0
while true do
  i = i + 1
  t[i] = ("x"):rep(64) .. i
end
