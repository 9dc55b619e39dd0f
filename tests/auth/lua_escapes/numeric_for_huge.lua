-- A numeric for loop that never ends in practice.
for i = 1, math.huge do end
return true
