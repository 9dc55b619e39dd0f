-- Fill the stack, then loop at its bottom catching stack overflows.
local function overflow() overflow() end
local function fill(n)
  if n == 0 then
    while true do pcall(overflow) end
  end
  fill(n - 1)
end
fill(100000)
