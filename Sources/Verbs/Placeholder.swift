import CVerbs
