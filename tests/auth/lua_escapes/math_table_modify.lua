-- Change the shared math library through rawset.
rawset(math, "floor", function() return 0 end)
return true
