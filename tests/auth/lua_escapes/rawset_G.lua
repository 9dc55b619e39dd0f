-- Write a global that outlives this call.
rawset(_G, "pwned", true)
return true
